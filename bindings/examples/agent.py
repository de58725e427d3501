import asyncio
import os

import toolwire


async def main() -> None:
    url = f"ws://127.0.0.1:{os.environ.get('PORT', '7700')}/toolwire"
    me = toolwire.Identity.load("agent.key")
    async with toolwire.connect(url, identity=me, server_key=open("server.pub").read()) as session:
        print(await session.call("add", {"a": 2, "b": 3}))


asyncio.run(main())
