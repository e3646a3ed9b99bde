"""A minimal bridge on the real `mautrix` appservice framework, driven by
tests/it/appservices_mautrix.rs against a running Plait.

It starts mautrix's AppService (its own aiohttp server for transactions), registers a ghost
user, creates a portal room inviting the Plait user, prints `ROOM <room id>`, waits for a
message from that user to arrive through a transaction, answers it as the ghost, pings itself
through the homeserver, and prints `DONE`. Any failure exits non-zero with the traceback.

Arguments: homeserver URL, server name, appservice port, the Plait user's ID.
"""

import asyncio
import logging
import sys

from mautrix.appservice import AppService
from mautrix.types import EventType, MessageEvent


async def main(homeserver: str, domain: str, port: int, plait_user: str) -> None:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    appservice = AppService(
        server=homeserver,
        domain=domain,
        as_token="as-mautrix",
        hs_token="hs-mautrix",
        bot_localpart="mautrixbot",
        id="mautrix",
    )
    received: asyncio.Future = asyncio.get_running_loop().create_future()

    async def on_event(event) -> None:
        if (
            event.type == EventType.ROOM_MESSAGE
            and isinstance(event, MessageEvent)
            and event.sender == plait_user
            and not received.done()
        ):
            received.set_result(event)

    appservice.matrix_event_handler(on_event)
    await appservice.start("127.0.0.1", port)
    try:
        ghost = appservice.intent.user(f"@mx_ghost:{domain}")
        await ghost.ensure_registered()
        await ghost.set_displayname("Bridged Ghost")
        room_id = await ghost.create_room(name="Portal", invitees=[plait_user])
        print(f"ROOM {room_id}", flush=True)
        event = await asyncio.wait_for(received, timeout=60)
        print(f"GOT {event.content.body}", flush=True)
        await ghost.send_text(room_id, f"echo: {event.content.body}")
        # mautrix answers `duration_ms or -1`, so a ping that took 0 ms reads as -1; it raises
        # when the ping fails.
        duration = await appservice.ping_self("mautrix-ping")
        print(f"PING {max(duration, 0)}", flush=True)
        print("DONE", flush=True)
    finally:
        await appservice.stop()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]))
