#!/usr/bin/env bash
# Builds the PyInstaller bundle dist/crack-inspector/ (build.spec: inspector, distill and
# inspector-agent in one folder) from a checkout, then runs the bundle's own self-test in a clean
# environment with no Python on PATH (scripts/bundle/selftest.sh). Exit status 0 only if the build
# and every self-test step worked; the measurements go to dist/bundle-report.json.
#
#   scripts/build_bundle.sh                    # the default 'cpu' flavour
#   scripts/build_bundle.sh --flavour cuda     # keeps every CUDA library (a GPU laptop)
#   scripts/build_bundle.sh --no-build         # only the self-test of an existing dist/
#
# PyInstaller's work folder is build/pyinstaller ($BUNDLE_WORKPATH to reuse another one: a second
# build with an unchanged build.spec then takes minutes instead of half an hour).
# Disk: docs/benchmarks/bundle.md says how much.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
FLAVOUR=cpu
BUILD=1
while [ $# -gt 0 ]; do
    case "$1" in
        --flavour) FLAVOUR=${2:?--flavour needs cpu or cuda}; shift 2 ;;
        --no-build) BUILD=0; shift ;;
        *) echo "build_bundle: unknown option $1 (--flavour cpu|cuda, --no-build)" >&2; exit 2 ;;
    esac
done
case "$FLAVOUR" in cpu|cuda) ;; *) echo "build_bundle: --flavour is cpu or cuda, not $FLAVOUR" >&2; exit 2 ;; esac
DIST=$REPO/dist/crack-inspector
REPORT=$REPO/dist/bundle-report.json

now() { date +%s.%N; }
t0=$(now)
if [ "$BUILD" = 1 ]; then
    bash scripts/setup.sh
    # the bundle extra of pyproject.toml: PyInstaller and the community hooks (torch, nvidia, cv2…)
    .venv/bin/python -m pip install -q "pyinstaller>=6.10,<7" "pyinstaller-hooks-contrib>=2024.10"
    # the X libraries of Qt's xcb plugin, which build.spec bundles (a stock desktop lacks some):
    # installed here when root with apt-get, else the build goes on and build.spec warns
    xcb_missing=$(.venv/bin/python -m inspector.qt.platform_check --always | tr '\n' ' ')
    if [ -n "$xcb_missing" ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        echo "build_bundle: installing the libraries Qt's xcb plugin needs: $xcb_missing" >&2
        # shellcheck disable=SC2086  # one word per package
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $xcb_missing \
            || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $xcb_missing; } || true
    elif [ -n "$xcb_missing" ]; then
        echo "build_bundle: warning: the bundle will lack X libraries its window needs; first: sudo apt-get install -y $xcb_missing" >&2
    fi
    echo "build_bundle: building the '$FLAVOUR' bundle into $DIST (several minutes)" >&2
    nice -n 19 .venv/bin/pyinstaller --noconfirm --log-level WARN --workpath "${BUNDLE_WORKPATH:-build/pyinstaller}" \
        --distpath dist build.spec -- --flavour "$FLAVOUR"
    echo "$FLAVOUR" > "$DIST/FLAVOUR"
fi
t_built=$(now)
[ -x "$DIST/inspector" ] || { echo "build_bundle: no bundle in $DIST" >&2; exit 1; }

# The self-test's world: a temporary HOME, no Python anywhere on PATH (only links to the few
# tools the self-test script uses), no variable inherited from this shell.
WORK=$(mktemp -d "${TMPDIR:-/tmp}/crack-bundle-selftest.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
mkdir -p "$WORK/bin" "$WORK/home"
for tool in bash cat date du sort head tail grep sed awk mkdir ls rm sleep kill find wc tr cut curl; do
    path=$(command -v "$tool" || true)
    [ -n "$path" ] && ln -s "$path" "$WORK/bin/$tool"
done
set +e
nice -n 19 env -i HOME="$WORK/home" PATH="$WORK/bin" QT_QPA_PLATFORM=offscreen LANG=C.UTF-8 TMPDIR="$WORK" \
    "$WORK/bin/bash" scripts/bundle/selftest.sh "$DIST" "$WORK/run" "$REPORT.part"
rc=$?
set -e
t_end=$(now)
build_s=$(awk -v a="$t0" -v b="$t_built" 'BEGIN { printf "%.1f", b - a }')
selftest_s=$(awk -v a="$t_built" -v b="$t_end" 'BEGIN { printf "%.1f", b - a }')
{
    printf '{\n  "flavour": "%s",\n  "built": %s,\n  "build_s": %s,\n  "selftest_s": %s,\n  "exit_status": %d,\n' \
        "$(cat "$DIST/FLAVOUR" 2>/dev/null || echo "$FLAVOUR")" "$([ "$BUILD" = 1 ] && echo true || echo false)" \
        "$build_s" "$selftest_s" "$rc"
    if [ -s "$REPORT.part" ]; then cat "$REPORT.part"; else printf '  "selftest": null\n'; fi
    printf '}\n'
} > "$REPORT"
rm -f "$REPORT.part"
echo "build_bundle: build ${build_s} s, self-test ${selftest_s} s, report $REPORT" >&2
[ "$rc" = 0 ] && echo "build_bundle: OK" >&2 || echo "build_bundle: FAILED (self-test exit $rc)" >&2
exit "$rc"
