#!/usr/bin/env bash
# Regenerate the README's report screenshot (docs/report_screenshot.png) from a fresh quickstart study:
#
#   scripts/screenshot.sh            qsfl tune studies/quickstart.toml, qsfl compare --top 3, qsfl report, then a
#                                    1280 x 2400 headless-Chromium screenshot of report.html -> docs/report_screenshot.png
#   scripts/screenshot.sh --quick    the same on a tiny budget (6 rounds with rungs 2 and 6, one GA generation of
#                                    4, three comparison seeds) into $WORK/report_screenshot.png: checks the
#                                    pipeline, docs/ untouched (tests/e2e/test_screenshot.py runs it)
#
# Needs Chromium (`apt-get install chromium`; the script installs it with apt-get when it is missing and it may).
# Environment: WORK (scratch directory, default a new temp dir; a WORK that holds the study of an earlier run is
# reused, so only the report is redrawn), WORKERS (default 2), CHROMIUM (the browser binary), NO_BROWSER=1 (stop
# after the report: no Chromium needed).
set -euo pipefail
cd "$(dirname "$0")/.."

QUICK=0
[ "${1:-}" = "--quick" ] && QUICK=1
WORK=${WORK:-$(mktemp -d)}
WORKERS=${WORKERS:-2}
OUT="$WORK/quickstart"
PNG=docs/report_screenshot.png
[ "$QUICK" = 1 ] && PNG="$WORK/report_screenshot.png"

find_chromium() {
    for b in ${CHROMIUM:-} chromium chromium-browser google-chrome; do
        if command -v "$b" >/dev/null 2>&1; then command -v "$b"; return 0; fi
    done
    return 1
}
BROWSER=$(find_chromium || true)
if [ -z "$BROWSER" ] && [ "${NO_BROWSER:-0}" != 1 ]; then
    echo "== installing chromium (apt-get)" >&2
    if [ "$(id -u)" = 0 ]; then apt-get install -y -q chromium >/dev/null; else sudo apt-get install -y -q chromium >/dev/null; fi
    BROWSER=$(find_chromium)
fi

TUNE=(); COMPARE=()
if [ "$QUICK" = 1 ]; then
    # the budget must fit the quickstart's [fidelity] (min_rounds < rounds): rungs 2 and 6
    TUNE=(--set base.rounds=6 --set fidelity.min_rounds=2 --set ga.population=4 --set ga.generations=1)
    COMPARE=(--rounds 6 --seeds 100,101,102)
fi

if [ -f "$OUT/trials.parquet" ]; then
    echo "== $OUT holds a study already: keeping it (the comparison reuses its saved runs)" >&2
else
    echo "== qsfl tune -> $OUT" >&2
    python3 -m qsfl_cli tune studies/quickstart.toml --out "$OUT" --workers "$WORKERS" --no-report -q "${TUNE[@]}"
fi
echo "== qsfl compare" >&2
python3 -m qsfl_cli compare "$OUT" --top 3 --workers "$WORKERS" -q "${COMPARE[@]}" >/dev/null
echo "== qsfl report" >&2
python3 -m qsfl_cli report "$OUT" -q
if [ "${NO_BROWSER:-0}" = 1 ]; then
    echo "== NO_BROWSER=1: report written to $OUT/report.html, no screenshot" >&2
    exit 0
fi

echo "== $BROWSER --headless --screenshot -> $PNG" >&2
# --no-sandbox: Chromium refuses to run as root otherwise (containers, CI)
"$BROWSER" --headless --no-sandbox --disable-gpu --hide-scrollbars --force-device-scale-factor=1 \
    --window-size=1280,2400 --screenshot="$(realpath -m "$PNG")" "file://$(realpath "$OUT/report.html")" \
    >/dev/null 2>&1
python3 - "$PNG" <<'EOF'
import sys
data = open(sys.argv[1], "rb").read()
assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000, "the screenshot is not a (non-empty) PNG"
print(f"wrote {sys.argv[1]} ({len(data) / 1e3:.0f} kB)")
EOF
