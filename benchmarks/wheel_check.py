"""Does every pinned dependency install from a wheel on the platforms users run?

For each platform and each pin of `pyproject.toml` (the base dependencies and the extras named;
with `--lock`, every pin of `requirements.lock` as well, the transitive ones included),
`pip download --no-deps --only-binary=:all:` asks the package index for a wheel; a pin without
one would make `pip install` build from source (or fail) there. Environment markers in the pins
(`; platform_machine == ...`) are evaluated for the target platform, so a pin that does not
apply there is skipped, as pip would.

    python benchmarks/wheel_check.py --extras=tf,sim,gcs,test --lock --output=benchmarks/results/wheel_check.json

Prints a table (one row per pin, one column per platform) and writes the JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import tomllib

from packaging.requirements import Requirement

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# pip takes exact platform tags: name the manylinux tags wheels are published under.
PLATFORMS = {
    "macOS arm64 (14+)": (["macosx_14_0_arm64"], {"sys_platform": "darwin", "platform_machine": "arm64"}),
    "Linux aarch64": (["manylinux_2_28_aarch64", "manylinux_2_27_aarch64", "manylinux_2_17_aarch64",
                       "manylinux2014_aarch64"], {"sys_platform": "linux", "platform_machine": "aarch64"}),
    "Linux x86_64": (["manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64",
                      "manylinux2014_x86_64"], {"sys_platform": "linux", "platform_machine": "x86_64"}),
}


def pins(extras: list[str], lock: bool, skip: set[str]) -> list[str]:
    with open(os.path.join(REPO, "pyproject.toml"), "rb") as f:
        project = tomllib.load(f)["project"]
    out = list(project["dependencies"])
    for extra in extras:
        out += project["optional-dependencies"][extra]
    if lock:
        with open(os.path.join(REPO, "requirements.lock")) as f:
            out += [line.strip() for line in f if line.strip() and not line.startswith("#")]
    seen, unique = set(), []
    for pin in out:
        req = Requirement(pin)
        key = (req.name.lower().replace("_", "-"), str(req.specifier), str(req.marker))
        if key not in seen and req.name.lower() not in skip:
            seen.add(key)
            unique.append(pin)
    return unique


def has_wheel(pin: str, tags: list[str], python: str, dest: str) -> str:
    req = Requirement(pin)
    args = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--quiet",
            "--python-version", python, "-d", dest, f"{req.name}{req.specifier}"]
    for tag in tags:
        args += ["--platform", tag]
    r = subprocess.run(args, capture_output=True, text=True)
    return "wheel" if r.returncode == 0 else "NO WHEEL"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--extras", default="tf,sim,gcs,test", help="comma-separated extras to check too")
    parser.add_argument("--lock", action="store_true", help="also every pin of requirements.lock")
    parser.add_argument("--skip", default="torch", help="comma-separated packages not to check")
    parser.add_argument("--python", default="3.11")
    parser.add_argument("--output", default=None, help="JSON path")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as dest:
        for pin in pins([e for e in args.extras.split(",") if e], args.lock, set(args.skip.split(","))):
            req = Requirement(pin)
            row = {"pin": f"{req.name}{req.specifier}" + (f"; {req.marker}" if req.marker else "")}
            for name, (tags, env) in PLATFORMS.items():
                applies = req.marker is None or req.marker.evaluate({**env, "python_version": args.python})
                row[name] = has_wheel(pin, tags, args.python, dest) if applies else "(not used)"
            rows.append(row)
    cols = list(PLATFORMS)
    width = max(len(r["pin"]) for r in rows)
    print(f"{'pin':<{width}}  " + "  ".join(f"{c:>18s}" for c in cols))
    for r in rows:
        print(f"{r['pin']:<{width}}  " + "  ".join(f"{r[c]:>18s}" for c in cols))
    missing = [(r["pin"], c) for r in rows for c in cols if r[c] == "NO WHEEL"]
    print(f"\n{len(missing)} pin/platform pairs without a wheel" + (f": {missing}" if missing else ""))
    if args.output:
        with open(args.output, "w") as f:
            json.dump({"python": args.python, "platforms": {k: v[0] for k, v in PLATFORMS.items()},
                       "rows": rows, "missing": missing}, f, indent=2)


if __name__ == "__main__":
    main()
