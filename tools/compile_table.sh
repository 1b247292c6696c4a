#!/usr/bin/env bash
# The README's "Memory per chip" table: python -m ladd.compile for each shipped pod config,
# scanned and unrolled, on v5p-128 and v6e-256 (train step only). One compile at a time;
# each report goes to OUT/<variant>_<layers>_<slice>.txt. Usage: tools/compile_table.sh OUT [ROW ...]
# with ROW like "1b scan v5p:4x4x8" (default: every row).
set -u
out=${1:?usage: tools/compile_table.sh OUT [ROW ...]}; shift
mkdir -p "$out"
rows=("$@")
if [ ${#rows[@]} -eq 0 ]; then
  for variant in base 1b 8b; do for layers in scan unrolled; do for slice in v5p:4x4x8 v6e:16x16; do
    rows+=("$variant $layers $slice"); done; done; done
fi
for row in "${rows[@]}"; do
  read -r variant layers slice <<< "$row"
  config=configs/openwebtext_pod.py; [ "$variant" != base ] && config="$config:$variant"
  scan=False; [ "$layers" = scan ] && scan=True
  file="$out/${variant}_${layers}_${slice/:/-}.txt"
  { echo "\$ python -m ladd.compile --config=$config --topology=$slice --config.model.scan_layers=$scan --nosampler"
    /usr/bin/time -f "wall %e s, user %U s, max RSS %M KB" python -m ladd.compile --config="$config" --topology="$slice" \
      --config.model.scan_layers=$scan --nosampler 2>&1; } > "$file"
done
