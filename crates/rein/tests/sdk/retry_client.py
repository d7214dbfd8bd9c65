"""The official `openai` and `anthropic` SDKs, retrying as they do by default (twice), sent a
request rein refuses because the budget is spent: each raises its rate-limit error at once, with
the quota named, and sends the request once, since rein's answer says a retry cannot help
(`x-should-retry: false`). The test counts the runs rein recorded.

Usage: retry_client.py BASE_URL AGENT_TOKEN
"""

import anthropic
import openai

from gateway_clients import BASE, TOKEN, check

ask = [{"role": "user", "content": "hello"}]

oa = openai.OpenAI(base_url=f"{BASE}/v1", api_key=TOKEN)
check(oa.max_retries == 2, f"the openai SDK retries {oa.max_retries} times by default")
try:
    oa.chat.completions.create(model="gw", messages=ask)
    check(False, "chat: a request on a spent budget was answered")
except openai.RateLimitError as e:
    check(e.code == "insufficient_quota", f"chat: {e.body}")

an = anthropic.Anthropic(base_url=BASE, api_key=TOKEN)
check(an.max_retries == 2, f"the anthropic SDK retries {an.max_retries} times by default")
try:
    an.messages.create(model="gw", max_tokens=50, messages=ask)
    check(False, "messages: a request on a spent budget was answered")
except anthropic.RateLimitError as e:
    check(e.body["error"]["type"] == "rate_limit_error", f"messages: {e.body}")

print("ok")
