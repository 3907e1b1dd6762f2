#!/usr/bin/env bash
# Builds a Dockerfile of this repository for real with buildah, without a Docker engine and
# without a registry, then runs smoke checks inside the image as uid 1000 and writes a summary.
#
#   infra/docker/build-check.sh [--keep] [DOCKERFILE]     (as root, from anywhere in the repo)
#
# DOCKERFILE defaults to infra/docker/Dockerfile; infra/mlflow/Dockerfile works too. The base
# image cannot be pulled here, so a local stand-in is built under the base's own name first:
#   debian:bookworm-slim  debootstrap --variant=minbase bookworm, slimmed as Debian's image is
#                         (same release, same archive: a faithful stand-in);
#   python:3.11-slim      the same, plus Debian's python3.11 with a venv at /usr/local, so that
#                         python and pip are where the official image has them (a stand-in only:
#                         Debian's 3.11.2 and pip 23.0.1, not python.org's newest 3.11).
# Python packages come from the package index named by the Dockerfile's pip (PyPI by default):
# the host's own pip settings (/etc/xdg/pip, /etc/pip.conf) do not reach the build.
#
# Storage lives in $SAMDETR_BUILD_DIR (default /var/tmp/samdetr-image), apart from any other
# container storage on the machine. The built image and that storage are removed at the end
# unless --keep is given (the samdetr image is about 10 GB); the debootstrapped root file system
# (about 200 MB) and the logs stay, so a second run skips debootstrap.
#
# Writes, for infra/docker/Dockerfile:
#   infra/docker/build-check-docker.txt   date, commit, command, wall time, size, smoke output
#   infra/docker/image-commands.txt       where each command lives in the built image (what
#                                         tests/project/test_image.py checks RUN steps against)
# and infra/docker/build-check-mlflow.txt for infra/mlflow/Dockerfile.
set -euo pipefail

die() { echo "build-check: error: $*" >&2; exit 1; }
say() { echo "build-check: $*"; }

keep=0
dockerfile=infra/docker/Dockerfile
for arg in "$@"; do
    case "$arg" in
        --keep) keep=1 ;;
        -h|--help) sed -n '2,27p' "$0"; exit 0 ;;
        -*) die "unknown option $arg (see --help)" ;;
        *) dockerfile=$arg ;;
    esac
done

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$repo"
[[ -f $dockerfile ]] || die "no Dockerfile at $dockerfile (paths are relative to $repo)"
[[ $(id -u) == 0 ]] || die "run as root: debootstrap and buildah's chroot isolation need it"

# Which image this is: infra/<name>/Dockerfile -> <name> (docker or mlflow).
name=$(basename "$(dirname "$dockerfile")")
work=${SAMDETR_BUILD_DIR:-/var/tmp/samdetr-image}
logs=$work/logs
mkdir -p "$logs"
stamp=$(date -u +%Y%m%dT%H%M%SZ)
log=$logs/$name-$stamp.log
tag=localhost/samdetr-build-check/$name:latest
summary=$repo/infra/docker/build-check-$name.txt

# buildah runs every step in a chroot: the OCI runtime (crun) cannot create cgroups in a
# container whose cgroups are in hybrid mode, which is how this kind of machine runs.
export BUILDAH_ISOLATION=chroot

for tool in buildah debootstrap; do
    if ! command -v "$tool" >/dev/null; then
        say "installing $tool from Debian's packages"
        if ! { apt-get update -q && apt-get install -y -q "$tool"; } >/dev/null; then
            die "could not install $tool with apt-get"
        fi
    fi
done

# overlay where the kernel allows it (layers shared, not copied), vfs otherwise.
driver=${SAMDETR_STORAGE_DRIVER:-}
if [[ -z $driver ]]; then
    driver=vfs
    probe=$work/probe
    mkdir -p "$probe"/{lower,upper,work,merged}
    if mount -t overlay overlay -o "lowerdir=$probe/lower,upperdir=$probe/upper,workdir=$probe/work" \
        "$probe/merged" 2>/dev/null; then
        umount "$probe/merged"
        driver=overlay
    fi
    rm -rf "$probe"
fi
bh() { buildah --root "$work/storage" --runroot "$work/run" --storage-driver "$driver" "$@"; }

free_gb=$(df --output=avail -BG "$work" | tail -1 | tr -dc 0-9)
need_gb=${SAMDETR_MIN_FREE_GB:-30}
say "disk before: $(df -h --output=avail,target "$work" | tail -1 | xargs) free"
(( free_gb >= need_gb )) || die "only ${free_gb} GB free under $work; the build needs about \
${need_gb} GB (set SAMDETR_MIN_FREE_GB to override, SAMDETR_BUILD_DIR to build elsewhere)"

# The base: the first FROM, with ${ARG} taken from the ARG default before it.
base=$(awk '
    /^ARG [A-Za-z_]+=/ { split($2, kv, "="); args[kv[1]] = kv[2] }
    /^FROM / { ref = $2; while (match(ref, /\$\{[A-Za-z_]+\}/)) {
                   key = substr(ref, RSTART + 2, RLENGTH - 3)
                   ref = substr(ref, 1, RSTART - 1) args[key] substr(ref, RSTART + RLENGTH) }
               print ref; exit }' "$dockerfile")
[[ -n $base ]] || die "no FROM line in $dockerfile"
case "$base" in
    */*/*) full_base=$base ;;
    */*) full_base=docker.io/$base ;;
    *) full_base=docker.io/library/$base ;;
esac

bookworm_rootfs() {
    local rootfs=$work/rootfs-bookworm
    if [[ -f $rootfs/.complete ]]; then
        say "reusing the bookworm root file system in $rootfs"
        return
    fi
    say "debootstrap --variant=minbase bookworm (about 30 s)"
    rm -rf "$rootfs"
    debootstrap --variant=minbase bookworm "$rootfs" http://deb.debian.org/debian >>"$log" 2>&1 \
        || die "debootstrap failed; see $log"
    # What Debian's own slim image has on top of a minbase: the release, its updates and its
    # security archive as apt sources, and no documentation, manual pages or translations from
    # packages installed later (the copyright files stay).
    rm -f "$rootfs/etc/apt/sources.list"
    cat >"$rootfs/etc/apt/sources.list.d/debian.sources" <<'EOF'
Types: deb
URIs: http://deb.debian.org/debian
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: http://deb.debian.org/debian-security
Suites: bookworm-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
    cat >"$rootfs/etc/dpkg/dpkg.cfg.d/slim" <<'EOF'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
path-exclude /usr/share/groff/*
path-exclude /usr/share/lintian/*
EOF
    echo 'APT::Keep-Downloaded-Packages "false";' >"$rootfs/etc/apt/apt.conf.d/slim"
    find "$rootfs/usr/share/doc" -mindepth 2 ! -name copyright ! -type d -delete
    rm -rf "$rootfs"/usr/share/{man,info,locale}/* "$rootfs"/var/lib/apt/lists/* \
        "$rootfs"/var/cache/apt/*.bin "$rootfs"/var/log/*.log
    touch "$rootfs/.complete"
}

# Commits a root file system as an image under the base's name, with the configuration Debian's
# image has (PATH and CMD); /dev is left empty, as the container runtime fills it.
import_rootfs() {
    local rootfs=$1 image=$2 cmd=$3 ctr mnt
    ctr=$(bh from scratch)
    mnt=$(bh mount "$ctr")
    tar -C "$rootfs" --exclude=./.complete --exclude='./dev/*' -cf - . | tar -C "$mnt" -xf -
    bh umount "$ctr" >/dev/null
    bh config --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
        --cmd "$cmd" "$ctr"
    bh commit --quiet --format docker --rm "$ctr" "$image" >/dev/null
}

if bh inspect --type image "$full_base" >/dev/null 2>&1; then
    say "base $full_base is already in $work/storage"
else
    case "$full_base" in
        docker.io/library/debian:bookworm-slim)
            bookworm_rootfs
            import_rootfs "$work/rootfs-bookworm" "$full_base" bash ;;
        docker.io/library/python:3.11-slim|docker.io/library/python:3.11-slim-bookworm)
            bookworm_rootfs
            import_rootfs "$work/rootfs-bookworm" localhost/bookworm-minbase:latest bash
            ctr=$(bh from --pull=never localhost/bookworm-minbase:latest)
            bh run "$ctr" -- sh -c 'apt-get update -q && apt-get install -y -q \
                --no-install-recommends ca-certificates python3.11 python3.11-venv \
                && rm -rf /var/lib/apt/lists/* && python3.11 -m venv /usr/local' >>"$log" 2>&1 \
                || die "the python:3.11-slim stand-in failed to install; see $log"
            bh config --cmd python3 "$ctr"
            bh commit --quiet --format docker --rm "$ctr" "$full_base" >/dev/null
            bh rmi localhost/bookworm-minbase:latest >/dev/null ;;
        *) die "no local stand-in for the base $base: pull it into $work/storage or add a recipe \
to $0" ;;
    esac
    say "base $full_base built locally (a stand-in: no registry is reachable)"
fi

# Where the machine reaches the package index through a TLS-inspecting proxy (this one does; its
# pip finds the proxy's CA through PIP_CERT), pip inside the build needs that CA bundle too. It
# reaches the RUN steps as root's pip configuration in a folder mounted over /root, which the base
# already has: a mount point that the image lacks would be left behind in it as an empty folder.
# Nothing of it is in the image (a smoke check below makes sure); the Dockerfiles write nothing
# to /root that they keep.
ca=${SAMDETR_BUILD_CA-${PIP_CERT:-}}
mounts=()
if [[ -n $ca ]]; then
    [[ -f $ca ]] || die "SAMDETR_BUILD_CA (or PIP_CERT) names $ca, which is not a file"
    rm -rf "$work/build-home"
    mkdir -p "$work/build-home/.config/pip"
    cp "$ca" "$work/build-home/.config/pip/ca.crt"
    printf '[global]\ncert = /root/.config/pip/ca.crt\n' >"$work/build-home/.config/pip/pip.conf"
    mounts=(--volume "$work/build-home:/root")
    say "pip in the build trusts $ca (mounted for the build only; SAMDETR_BUILD_CA= turns it off)"
fi

command_line="buildah build --pull=never --isolation chroot --format docker ${mounts[*]} \
-f $dockerfile -t $tag ."
say "building: $command_line   (log: $log)"
start=$SECONDS
if ! bh build --pull=never --isolation chroot --format docker "${mounts[@]}" -f "$dockerfile" \
    -t "$tag" . >>"$log" 2>&1; then
    tail -30 "$log" >&2
    die "the build failed after $((SECONDS - start)) s; the whole log is $log"
fi
wall=$((SECONDS - start))
size=$(bh images --format '{{.Size}}' "$tag")
say "built in ${wall} s, ${size}"

# The smoke checks run through the image's ENTRYPOINT (tini), as uid 1000, with the HOME a
# container runtime would give that user. A chroot has no PID namespace of its own, so tini is
# not PID 1 there: TINI_SUBREAPER lets it reap children all the same (and not warn each time).
mapfile -t entrypoint < <(bh inspect --type image \
    --format '{{range .Docker.Config.Entrypoint}}{{println .}}{{end}}' "$tag" | sed '/^$/d')
ctr=$(bh from --pull=never "$tag")
trap 'bh rm "$ctr" >/dev/null 2>&1 || true' EXIT
home=$(bh run "$ctr" -- sh -c 'getent passwd 1000 | cut -d: -f6')
smoke_out=$logs/$name-$stamp.smoke
: >"$smoke_out"
failed=0
check() {
    echo "\$ $*" >>"$smoke_out"
    if ! bh run --user 1000:1000 --env HOME="${home:-/}" --env TINI_SUBREAPER=1 "$ctr" -- \
        "${entrypoint[@]}" \
        bash -c "$*" >>"$smoke_out" 2>&1; then
        echo "FAILED: $*" >>"$smoke_out"
        failed=1
    fi
}
check id
# The build's CA mount left nothing behind: no pip configuration file (pip config list also
# shows the ENV's PIP_* variables, as :env: lines; those belong). The $(...) is the image's.
# shellcheck disable=SC2016
check 'test ! -e /etc/xdg/pip && test ! -e /etc/pip.conf \
&& test -z "$(pip config list | grep -v ^:env:)" && echo "no pip configuration file in the image"'
case "$name" in
    docker)
        check tini --version
        check 'python -c "import torch, ray, mlflow, boto3, samdetr, pipelines; print(\"torch\",
torch.__version__, \"cuda\", torch.version.cuda, \"ray\", ray.__version__, \"mlflow\",
mlflow.__version__, \"boto3\", boto3.__version__)"'
        check pip --version
        check ray --version
        # The whole config goes to a file first: a pipe into head would hide a failure. The
        # $(...) is for the image's shell, not this one.
        # shellcheck disable=SC2016
        check 'cd /tmp && python -m pipelines.train --cfg job >job.yaml && head -n 12 job.yaml \
&& echo "... ($(wc -l <job.yaml) lines composed)"'
        # KubeRay's `bash -lc` and the cluster launcher's `bash --login` reset PATH from
        # /etc/profile: the venv's commands must still be found there.
        check "bash -lc 'command -v python pip ray wget grep rsync ssh tini'"
        # What the cluster launcher's head setup runs on AWS (Ray's defaults), in its shell.
        check "bash --login -c \"pip install 'boto3>=1.4.8'\""
        label=$(bh inspect --type image --format '{{index .Docker.Config.Labels "io.samdetr.cuda"}}' "$tag")
        check "test \"\$(python -c 'import torch; print(torch.version.cuda)')\" = '$label' \
&& echo 'torch.version.cuda matches the io.samdetr.cuda label ($label)'"
        ;;
    mlflow)
        check 'mlflow --version'
        # create_engine loads the driver that a plain postgresql:// store URI asks for, whichever
        # it is; boto3 serves the S3 artifact store; Flask-WTF is the basic-auth app's.
        check 'python -c "import boto3, flask_wtf, sqlalchemy; e = sqlalchemy.create_engine(\"postgresql://u@h/d\");
print(\"postgresql driver\", e.dialect.driver, \"boto3\", boto3.__version__, \"flask_wtf\", flask_wtf.__version__)"'
        check 'python -c "import mlflow.server.auth; print(\"basic-auth app: mlflow.server.auth\")"'
        ;;
esac
cat "$smoke_out"

# Where each command lives in the built image, for tests/project/test_image.py: every executable in the
# usual bin and sbin folders and in the image's PATH, and which of those folders are links.
if [[ $name == docker ]]; then
    mnt=$(bh mount "$ctr")
    image_path=$(bh inspect --type image --format '{{range .Docker.Config.Env}}{{println .}}{{end}}' \
        "$tag" | sed -n 's/^PATH=//p')
    {
        echo "# Executables in the image built from infra/docker/Dockerfile, recorded by"
        echo "# infra/docker/build-check.sh on $(date -u +%F) at commit $(git rev-parse --short HEAD)."
        echo "# 'LINK dir -> target' lines are folders that are symbolic links; BASEPATH is the"
        echo "# PATH the base image sets (what RUN steps get before an ENV PATH)."
        echo "BASEPATH $(bh inspect --type image --format '{{range .Docker.Config.Env}}{{println .}}{{end}}' \
            "$full_base" | sed -n 's/^PATH=//p')"
        for dir in $(echo "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:$image_path" \
                | tr : '\n' | sort -u); do
            if [[ -L $mnt$dir ]]; then
                echo "LINK $dir -> $(readlink "$mnt$dir")"
            elif [[ -d $mnt$dir ]]; then
                find "$mnt$dir" -mindepth 1 -maxdepth 1 \( -type f -o -type l \) -perm -u=x \
                    -printf "$dir/%f\n" | sort
            fi
        done
    } >"$repo/infra/docker/image-commands.txt"
    bh umount "$ctr" >/dev/null
fi

dirty=$(git status --porcelain -- "$dockerfile" .dockerignore pyproject.toml infra/constraints.txt \
    samdetr pipelines conf | wc -l)
commit=$(git rev-parse --short HEAD)
(( dirty == 0 )) || commit="$commit (with $dirty uncommitted changes to the files built)"
{
    echo "# infra/docker/build-check.sh $dockerfile: the last run's record."
    echo "date:      $(date -u '+%F %H:%M UTC')"
    echo "commit:    $commit"
    # shellcheck disable=SC1091
    echo "machine:   $(nproc) cores, $(. /etc/os-release && echo "$PRETTY_NAME"), buildah $(buildah --version | awk '{print $3}'), storage $driver"
    echo "base:      $full_base (local stand-in, see build-check.sh)"
    echo "command:   $command_line"
    echo "wall time: ${wall} s (the build alone)"
    echo "size:      $size (uncompressed, as buildah images reports it)"
    echo "smoke checks, as uid 1000 through the image's entrypoint:"
    sed 's/^/    /' "$smoke_out"
} >"$summary"
say "summary written to ${summary#"$repo"/}"

if (( keep )); then
    say "kept $tag in $work/storage (buildah --root $work/storage --storage-driver $driver images)"
else
    bh rm "$ctr" >/dev/null
    trap - EXIT
    bh rmi --all --force >/dev/null
    # The overlay driver may leave its own mounts under the storage root.
    grep -o " $work/storage[^ ]*" /proc/mounts | sort -r | xargs -r -n1 umount 2>/dev/null || true
    rm -rf "$work/storage" "$work/run"
    say "removed the image and the build storage; kept $work/rootfs-bookworm and $logs"
fi
say "disk after: $(df -h --output=avail,target "$work" | tail -1 | xargs) free"
(( failed == 0 )) || die "a smoke check failed; see above"
say "all smoke checks passed"
