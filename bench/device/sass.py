"""sass.py: dumps the SASS of every cubin in a moejit cache folder (the cache's header is stripped
at the ELF magic) and counts the instructions named on the command line, per kernel file.
  python3 bench/device/sass.py CACHE_DIR HGMMA UTMALDG ..."""
import glob, os, subprocess, sys, tempfile

cache, names = sys.argv[1], sys.argv[2:]
for path in sorted(glob.glob(os.path.join(cache, "**", "*"), recursive=True)):
    if not os.path.isfile(path):
        continue
    data = open(path, "rb").read()
    at = data.find(b"\x7fELF")
    if at < 0:
        continue
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(data[at:])
        f.flush()
        sass = subprocess.run(["cuobjdump", "-sass", f.name], capture_output=True, text=True).stdout
    funcs = [l.split(":")[1].strip() for l in sass.splitlines() if l.strip().startswith("Function :")]
    counts = {n: sum(1 for l in sass.splitlines() if n in l) for n in names}
    print(os.path.basename(path)[:16], ",".join(funcs), " ".join(f"{n}={c}" for n, c in counts.items()))
