"""A trained detector as a file that runs without this library, and the proof that it gives
what the PyTorch model gives.

- :mod:`samdetr.export.exporter`: ``export_model`` writes ONNX (torch.onnx, the dynamo exporter
  where it works) or a torch.export ExportedProgram, with the category names and the config in
  the file;
- :mod:`samdetr.export.runtime`: ``OnnxDetector`` (ONNX Runtime) and ``ExportedProgramDetector``
  run such a file and return the model's output dict;
- :mod:`samdetr.export.parity`: ``parity_report`` compares a runner with the PyTorch model on
  generated images.

May import ``samdetr.batching``, ``samdetr.config`` and ``samdetr.model``; onnx, onnxscript and
onnxruntime (the ``export`` extra) only inside the functions that need them.
"""
