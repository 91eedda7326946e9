"""The Python half of `cargo bench -p kith-benches --bench ffi`.

Two clients over an embedded node (sled, at argv[1]); Alice sends a
numbered 100-byte text and Bob's EventListener receives it, N times after a
warm-up. Prints `mean_us=<mean microseconds> n=<N>`; every message must
arrive, with its body, or the script fails.
"""

import asyncio
import os
import sys
import time

import kith

N = int(os.environ.get("KITH_FFI_N", "200"))
HOUR_MS = 3_600_000


class Inbox(kith.EventListener):
    def __init__(self, loop):
        self.loop = loop
        self.queue = asyncio.Queue()

    def on_event(self, event):
        if isinstance(event, kith.KithEvent.MESSAGE):
            self.loop.call_soon_threadsafe(self.queue.put_nowait, event.message)


async def main():
    directory = sys.argv[1]
    node = kith.EmbeddedNode.open(os.path.join(directory, "node"))
    # The same stretched timers as the Rust sides of this benchmark.
    tuning = kith.ClientTuning(sync_interval_ms=HOUR_MS, discovery_before_send_ms=HOUR_MS)

    async def client(name):
        options = kith.ClientOptions(
            data_dir=os.path.join(directory, name), embedded_node=node, tuning=tuning
        )
        c = await kith.create_client(options, kith.Wallet.generate())
        await c.register()
        return c

    alice, bob = await client("alice"), await client("bob")
    inbox = Inbox(asyncio.get_running_loop())
    stream = bob.stream_events(inbox)
    group = await alice.create_group([bob.inbox_id()], kith.GroupOptions())

    async def round_trip(i):
        body = f"{i:0>100}"
        start = time.perf_counter()
        await group.send_text(body)
        message = await asyncio.wait_for(inbox.queue.get(), 30)
        elapsed = time.perf_counter() - start
        assert message.text == body, (message.text, body)
        return elapsed

    for i in range(20):
        await round_trip(-i - 1)
    total = 0.0
    for i in range(N):
        total += await round_trip(i)
    print(f"mean_us={total / N * 1e6:.1f} n={N}")
    stream.stop()
    await alice.shutdown()
    await bob.shutdown()


asyncio.run(main())
