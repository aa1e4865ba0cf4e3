"""Regenerates BUILD from the tree: python .ci/update_build.py (tests/test_build_file.py checks it)."""
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
def files(top):
  out=[]
  for d,_,fs in os.walk(os.path.join(ROOT,top)):
    if '__pycache__' in d: continue
    for f in fs:
      if f.endswith('.py'): out.append(os.path.relpath(os.path.join(d,f),ROOT))
  return sorted(out)
lines=['# Bazel targets mirroring the package (Bazel is not installed here; tests/test_build_file.py checks coverage).',
'# Regenerate after adding files with `python .ci/update_build.py`: every module and test is named explicitly.','',
'load("@rules_python//python:defs.bzl", "py_library", "py_test")','',
'package(default_visibility = ["//visibility:public"])','']
pkgs={}
for f in files('tinyrs_jax'):
  pkg=os.path.dirname(f)
  pkgs.setdefault(pkg,[]).append(f)
for pkg in sorted(pkgs):
  name=pkg.replace('/','_')
  deps=[f'":{p.replace("/","_")}"' for p in sorted(pkgs) if p!=pkg and (p=='tinyrs_jax' or pkg=='tinyrs_jax')]
  lines.append('py_library(')
  lines.append(f'    name = "{name}",')
  lines.append('    srcs = [')
  for f in pkgs[pkg]: lines.append(f'        "{f}",')
  lines.append('    ],')
  lines.append('    imports = ["."],')
  lines.append(')')
  lines.append('')
lib_names=[f'":{p.replace("/","_")}"' for p in sorted(pkgs)]
for top in ('configs','benchmarks'):
  fs=files(top)
  if not fs: continue
  lines.append('py_library(')
  lines.append(f'    name = "{top}",')
  lines.append('    srcs = [')
  for f in fs: lines.append(f'        "{f}",')
  lines.append('    ],')
  lines.append('    deps = [' + ', '.join(lib_names) + '],')
  lines.append(')')
  lines.append('')
helpers=[f for f in files('tests') if not os.path.basename(f).startswith('test_')]
lines.append('py_library(')
lines.append('    name = "test_helpers",')
lines.append('    testonly = True,')
lines.append('    srcs = [' + ', '.join(f'"{f}"' for f in helpers) + '],')
lines.append(')')
lines.append('')
for f in files('tests'):
  b=os.path.basename(f)
  if not b.startswith('test_'): continue
  lines.append('py_test(')
  lines.append(f'    name = "{b[:-3]}",')
  lines.append(f'    srcs = ["{f}"],')
  lines.append(f'    main = "{f}",')
  lines.append('    deps = [":test_helpers", ' + ', '.join(lib_names) + (', ":configs"' if files('configs') else '') + (', ":benchmarks"' if files('benchmarks') else '') + '],')
  lines.append(')')
  lines.append('')
open(os.path.join(ROOT,'BUILD'),'w').write('\n'.join(lines))
