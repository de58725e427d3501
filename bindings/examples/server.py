import os

import toolwire

server = toolwire.ToolServer(
    toolwire.Identity.load("server.key"),
    allowed_clients=[open("agent.pub").read()],
)


@server.tool
async def add(a: int, b: int) -> int:
    """Adds two integers."""
    return a + b


server.run("127.0.0.1", int(os.environ.get("PORT", "7700")))
