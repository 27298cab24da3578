#!/usr/bin/python3
"""A customer-support agent, as deploy/policies/support-agent.toml expects one: installed as
/opt/support-agent/bin/agent, it answers a ticket from the knowledge base in
/srv/knowledge-base and posts the answer to the helpdesk API. It writes no file.

Run inside a run under that policy, with the paths rewritten by the test (tests/tests/
workloads.rs): KB_DIR for /srv/knowledge-base; HELPDESK the API's host:port (loopback).
Deterministic; exits non-zero at the first failure.
"""
import http.client
import json
import os
import sys

kb_dir = os.environ["KB_DIR"]
host, port = os.environ["HELPDESK"].rsplit(":", 1)
ticket = {"id": "T-1234", "question": "How do I reset my password?"}

# Search the knowledge base: every article, scored by the words it shares with the question.
words = {w.strip("?.,").lower() for w in ticket["question"].split()}
best = None
for name in sorted(os.listdir(kb_dir)):
    if not name.endswith(".md"):
        continue
    with open(os.path.join(kb_dir, name), encoding="utf-8") as f:
        text = f.read()
    score = len(words & {w.strip("#.,").lower() for w in text.split()})
    if best is None or score > best[0]:
        best = (score, name, text)
if best is None or best[0] == 0:
    sys.exit("no article answers the ticket")

answer = {"ticket": ticket["id"], "article": best[1], "answer": best[2].splitlines()[0].lstrip("# ")}
conn = http.client.HTTPConnection(host, int(port), timeout=5)
conn.request("POST", "/api/tickets/T-1234/answer", body=json.dumps(answer), headers={"Content-Type": "application/json"})
resp = conn.getresponse()
body = resp.read()
if resp.status != 201:
    sys.exit(f"helpdesk said {resp.status}: {body!r}")
print(f"answered {ticket['id']} with {best[1]}")
