#!/usr/bin/env python3
"""The attack catalogue's tools: one program, many tools, each scenario's world in env.json.

`env.py <tool>` reads the call's JSON arguments on stdin and the scenario's environment from
env.json in the workspace (each run works on its own copy). A tool listed under "outputs" is a
read: it prints its output, or, when the entry names an argument with "by", the output for that
argument's value (a tool listed under "record" is also recorded as an effect, as a fetch of a
URL is). Any other tool is an effect: it is appended to effects.jsonl, the record the
catalogue's figures count, and acknowledged. `tests.run` runs every tests/test_*.py file in the
workspace with this Python and reports how each went.
"""
import glob
import json
import os
import subprocess
import sys


def main():
    tool = sys.argv[1]
    args = json.load(sys.stdin)
    with open("env.json") as f:
        env = json.load(f)
    if tool == "tests.run":
        results = {}
        for path in sorted(glob.glob("tests/test_*.py")):
            done = subprocess.run([sys.executable, path], capture_output=True, text=True, timeout=60)
            results[path] = "passed" if done.returncode == 0 else "failed: " + done.stderr.strip()[-300:]
        print(json.dumps({"results": results}))
        return
    entry = env.get("outputs", {}).get(tool)
    if tool in env.get("record", []):
        record(tool, args)
    if entry is not None:
        if "by" in entry:
            key = str(args.get(entry["by"], ""))
            values = entry["values"]
            if key not in values:
                print(json.dumps({"error": "no %s %r" % (entry["by"], key)}))
                sys.exit(1)
            print(json.dumps(values[key]))
        else:
            print(json.dumps(entry["value"]))
        return
    n = record(tool, args)
    print(json.dumps({"ok": True, "id": "%s-%d" % (tool, n)}))


def record(tool, args):
    """Appends the call to effects.jsonl; returns how many effects there are now."""
    with open("effects.jsonl", "a") as f:
        f.write(json.dumps({"tool": tool, "args": args}, sort_keys=True) + "\n")
    with open("effects.jsonl") as f:
        return sum(1 for _ in f)


if __name__ == "__main__":
    main()
