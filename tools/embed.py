#!/usr/bin/env python3
"""Embed a text file as a C string constant: embed.py NAME INPUT OUTPUT."""
import sys

name, src, dst = sys.argv[1:4]
data = open(src, encoding="utf-8").read()
with open(dst, "w", encoding="utf-8") as f:
    f.write("/* Generated from %s by tools/embed.py; do not edit. */\n" % src.split("/")[-1])
    f.write("static const char %s[] =\n" % name)
    for line in data.splitlines(True):
        esc = line.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
        f.write('    "%s"\n' % esc)
    f.write(";\n")
