#!/bin/sh
# A plain coding task, as a coding agent does it: a git repository, edits, unit tests, a
# virtual environment, a make build, searches, a request to a dev server on loopback.
# Run inside a run under deploy/policies/coding-agent.toml (paths rewritten by the test:
# WORKSPACE for /workspace, HOME for /home/agent). DEV_PORT: a loopback HTTP server the test
# started. Every step must succeed; the script stops at the first failure (set -e).
set -eu
cd "$WORKSPACE"
rm -rf repo venv
git init -q -b main repo
cd repo
git config user.email agent@example.com
git config user.name "Coding Agent"
cat > calc.py <<'PY'
def add(a, b):
    return a + b


def mul(a, b):
    return a * b
PY
cat > test_calc.py <<'PY'
import unittest

from calc import add, mul


class CalcTest(unittest.TestCase):
    def test_add(self):
        self.assertEqual(add(2, 3), 5)

    def test_mul(self):
        self.assertEqual(mul(2, 3), 6)


if __name__ == "__main__":
    unittest.main()
PY
python3 -m unittest -q 2>&1
git add -A
git commit -qm "calc: add and mul"
sed -i 's/return a + b/return b + a/' calc.py
git diff --stat
git commit -qam "calc: commute"
test "$(git log --oneline | wc -l)" -eq 2
git status --short
grep -rn "def add" --include='*.py' .
find . -name '*.py' -not -path './.git/*' | sort
cat > Makefile <<'MK'
hello: hello.c
	cc -O1 -o hello hello.c
MK
printf '#include <stdio.h>\nint main(void) { puts("built"); return 0; }\n' > hello.c
make -s
./hello
python3 -m venv --without-pip "$WORKSPACE/venv"
"$WORKSPACE/venv/bin/python" -c 'import sys; print("venv", sys.prefix != sys.base_prefix)'
curl -sS --max-time 5 "http://127.0.0.1:$DEV_PORT/" > /dev/null
git log --oneline -1
echo "workload done"
