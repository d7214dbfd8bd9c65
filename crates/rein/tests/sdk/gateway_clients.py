"""What the SDK scripts that talk to one gateway share: the official `openai` and `anthropic`
clients pointed at rein (from the command line: BASE_URL AGENT_TOKEN), neither retrying on its
own, and the check that stops a script at its first failure, saying what was expected.
"""

import sys

import anthropic
import openai

BASE, TOKEN = sys.argv[1], sys.argv[2]
oa = openai.OpenAI(base_url=f"{BASE}/v1", api_key=TOKEN, max_retries=0)
an = anthropic.Anthropic(base_url=BASE, api_key=TOKEN, max_retries=0)


def check(cond, what):
    if not cond:
        raise SystemExit(f"FAILED: {what}")
