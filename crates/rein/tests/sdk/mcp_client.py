"""The official MCP Python SDK (`mcp`) against rein's MCP gateway (`/mcp`, Streamable HTTP), as an
agent speaking MCP would use it.

Usage: mcp_client.py BASE_URL TOKEN
"""

import asyncio
import sys

from mcp.client.session import ClientSession
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client

BASE, TOKEN = sys.argv[1], sys.argv[2]


def check(cond, what):
    if not cond:
        raise SystemExit(f"FAILED: {what}")


def text(result):
    return "".join(getattr(c, "text", "") for c in result.content)


async def main():
    http = create_mcp_http_client(headers={"Authorization": f"Bearer {TOKEN}"})
    async with http, streamable_http_client(f"{BASE}/mcp", http_client=http) as (read, write, *_):
        async with ClientSession(read, write) as session:
            await session.initialize()
            names = sorted(t.name for t in (await session.list_tools()).tools)
            # ev.get-env is denied outright by a policy: a caller never sees it.
            check(names == ["ev.echo", "ev.get-sum"], f"tools/list shows only what may be called: {names}")

            r = await session.call_tool("ev.get-sum", {"a": 2, "b": 40})
            check(not r.is_error and "42" in text(r), f"an allowed call runs with its arguments: {r}")
            # echo's output is labelled untrusted: the agent gets it marked as data.
            r = await session.call_tool("ev.echo", {"message": "hello through rein"})
            out = text(r)
            check(not r.is_error and 'untrusted-data tool="ev.echo"' in out
                  and all(w in out for w in ["hello", "through", "rein"]),
                  f"echo's untrusted output arrives marked as data: {r}")
            # A call the policies deny on its arguments never reaches the server.
            r = await session.call_tool("ev.get-sum", {"a": 5000, "b": 1})
            check(r.is_error and "sums-stay-small" in text(r) and "5001" not in text(r),
                  f"a call denied on its arguments is refused, naming the policy: {r}")
            # A tool denied outright is refused too when called by name.
            r = await session.call_tool("ev.get-env", {})
            check(r.is_error and "no-env" in text(r), f"the hidden tool is refused: {r}")
    print("ok")


asyncio.run(main())
