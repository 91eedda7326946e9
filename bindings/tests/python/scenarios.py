"""Kith from Python, through the generated `kith` module.

Run by `bindings/tests/python.rs` (part of `cargo test --workspace`) with
the generated module on PYTHONPATH, in a virtual environment that has
eth-account. With KITH_NODE_URL set, the clients talk to that `kith-node`
process; without it, to an embedded node. Exits non-zero on the first
failed check.
"""

import asyncio
import os
import sys
import tempfile

from eth_account import Account
from eth_account.messages import encode_defunct

import kith

TIMEOUT = 30


class Queue(kith.EventListener):
    """Events from the library's thread, onto the asyncio loop."""

    def __init__(self):
        self.loop = asyncio.get_running_loop()
        self.queue = asyncio.Queue()

    def on_event(self, event):
        self.loop.call_soon_threadsafe(self.queue.put_nowait, event)

    async def wait_for(self, what, predicate):
        async def next_matching():
            while True:
                event = await self.queue.get()
                if predicate(event):
                    return event

        try:
            return await asyncio.wait_for(next_matching(), TIMEOUT)
        except asyncio.TimeoutError:
            raise AssertionError(f"no event for {what} within {TIMEOUT} s") from None


class EthAccountSigner(kith.WalletSigner):
    """A wallet outside Kith: eth-account signs EIP-191 personal messages."""

    def __init__(self, account, refuse=False):
        self.account = account
        self.refuse = refuse
        self.texts = []

    def sign_personal(self, text):
        self.texts.append(text)
        if self.refuse:
            raise kith.SignerError.Refused("the user said no")
        signed = self.account.sign_message(encode_defunct(text=text))
        return bytes(signed.signature)


def options(directory, name, node):
    path = os.path.join(directory, name)
    url = os.environ.get("KITH_NODE_URL")
    if url:
        return kith.ClientOptions(data_dir=path, node_urls=[url])
    return kith.ClientOptions(data_dir=path, embedded_node=node)


def message_text(event):
    return event.message.text if isinstance(event, kith.KithEvent.MESSAGE) else None


async def expect_error(kind, call):
    try:
        await call
    except kind as error:
        return error
    raise AssertionError(f"expected {kind.__name__}")


async def main():
    where = "kith-node at " + os.environ["KITH_NODE_URL"] if "KITH_NODE_URL" in os.environ else "embedded node"
    directory = tempfile.mkdtemp()
    node = kith.EmbeddedNode.in_memory()

    # A private key gives the address Ethereum libraries give it; a key that
    # is not one is refused.
    key = Account.create().key.hex()
    assert kith.Wallet.from_private_key(key).address() == Account.from_key(key).address
    try:
        kith.Wallet.from_private_key("0x1234")
        raise AssertionError("a two-byte key was taken")
    except kith.KithError.Wallet:
        pass

    # Alice's key is Kith's; Bob's wallet is eth-account, behind the
    # WalletSigner callback interface.
    alice = await kith.create_client(options(directory, "alice", node), kith.Wallet.generate())
    bob_account = Account.create()
    bob_signer = EthAccountSigner(bob_account)
    bob_wallet = kith.Wallet.from_signer(bob_account.address, bob_signer)
    assert bob_wallet.address() == bob_account.address, (bob_wallet.address(), bob_account.address)
    bob = await kith.create_client(options(directory, "bob", node), bob_wallet)
    await alice.register()
    await bob.register()
    assert len(bob_signer.texts) == 1, bob_signer.texts
    assert bob.installation_id() in bob_signer.texts[0].lower(), bob_signer.texts[0]
    assert bob.inbox_id() == bob_account.address
    print(f"[{where}] registered alice {alice.inbox_id()} and bob {bob.inbox_id()} (eth-account signed)")

    alice_events, bob_events = Queue(), Queue()
    alice_stream = alice.stream_events(alice_events)
    bob_stream = bob.stream_events(bob_events)

    # A group, with messages both ways through the listeners.
    group = await alice.create_group([bob.inbox_id()], kith.GroupOptions(name="Climbing"))
    joined = await bob_events.wait_for("bob to join", lambda e: isinstance(e, kith.KithEvent.JOINED))
    assert joined.conversation_id == group.id()
    await group.send_text("Saturday, 9am?")
    got = await bob_events.wait_for("alice's message", lambda e: message_text(e) == "Saturday, 9am?")
    assert got.message.sender_inbox_id == alice.inbox_id()
    assert got.message.verified
    bobs = await bob.conversation(group.id())
    assert (await bobs.metadata()).name == "Climbing"
    await bobs.send_text("See you there")
    got = await alice_events.wait_for("bob's reply", lambda e: message_text(e) == "See you there")
    assert got.message.sender_inbox_id == bob.inbox_id()
    print(f"[{where}] messages went both ways through the event listeners")

    # A rename, seen by the other side.
    await group.update_name("Sunday climbing")
    changed = await bob_events.wait_for(
        "the rename", lambda e: isinstance(e, kith.KithEvent.METADATA_CHANGED)
    )
    assert changed.metadata.name == "Sunday climbing", changed.metadata
    assert changed.by_inbox_id == alice.inbox_id()
    assert (await bobs.metadata()).name == "Sunday climbing"
    members = sorted(m.inbox_id for m in await bobs.members())
    assert members == sorted([alice.inbox_id(), bob.inbox_id()]), members
    print(f"[{where}] the rename reached bob")

    # A group migrated from an older protocol: its legacy id and metadata
    # reach the other member, who finds the group by that id.
    legacy = kith.LegacyConversation(id="v2-topic-42", metadata={"topic": "/xmtp/0/m-42/proto"})
    migrated = await alice.create_group(
        [bob.inbox_id()], kith.GroupOptions(name="Migrated", legacy=legacy)
    )
    await bob_events.wait_for(
        "bob joins the migrated group",
        lambda e: isinstance(e, kith.KithEvent.JOINED) and e.conversation_id == migrated.id(),
    )
    found = await bob.conversation_by_legacy_id("v2-topic-42")
    assert found is not None and found.id() == migrated.id()
    assert (await found.metadata()).legacy == legacy
    assert await bob.conversation_by_legacy_id("v2-topic-43") is None
    print(f"[{where}] a migrated group carried its legacy id to the other member")

    # Admins and policies, through the records the bindings define.
    await group.add_admin(bob.inbox_id())
    changed = await bob_events.wait_for(
        "bob made admin",
        lambda e: isinstance(e, kith.KithEvent.METADATA_CHANGED) and bob.inbox_id() in e.metadata.admins,
    )
    await group.set_policies(
        kith.Policies(
            add_member=kith.Permission.ADMIN_ONLY,
            remove_member=kith.Permission.ADMIN_ONLY,
            update_attribute_default=kith.Permission.ALLOW,
            update_attribute={},
            manage_admins=kith.Permission.SUPER_ADMIN_ONLY,
            change_policies=kith.Permission.SUPER_ADMIN_ONLY,
        )
    )
    await group.remove_admin(bob.inbox_id())
    await bob_events.wait_for(
        "bob no longer admin",
        lambda e: isinstance(e, kith.KithEvent.METADATA_CHANGED) and bob.inbox_id() not in e.metadata.admins,
    )
    # Bob is no admin and the policy now says admins add members.
    carol = await kith.create_client(options(directory, "carol", node), kith.Wallet.generate())
    await carol.register()
    await expect_error(kith.KithError.NotPermitted, bobs.add_members([carol.inbox_id()]))
    print(f"[{where}] admins and policies changed, and the policy held")

    # A DM, in the mode asked for.
    dm = await alice.find_or_create_dm(bob.inbox_id(), mode=kith.DmMode.NON_REPUDIABLE)
    assert dm.dm_peer_inbox_id() == bob.inbox_id()
    assert await dm.dm_mode() == kith.DmMode.NON_REPUDIABLE
    await dm.send_text("just us")
    got = await bob_events.wait_for("the DM message", lambda e: message_text(e) == "just us")
    assert got.message.conversation_id == dm.id()
    bobs_dm = await bob.conversation(dm.id())
    assert (await bobs_dm.metadata()).kind == kith.ConversationKind.DM
    print(f"[{where}] a non-repudiable DM carried a message")

    # Bad calls raise the mapped exception and change nothing.
    before = [m.id for m in await group.messages()]
    await expect_error(kith.KithError.UnknownConversation, alice.conversation("00" * 16))
    await expect_error(kith.KithError.InvalidInput, alice.conversation("not hex"))
    await expect_error(kith.KithError.InvalidInput, group.add_members(["0xnot-an-inbox"]))
    # Carol is not a member: she does not have the conversation at all.
    await expect_error(kith.KithError.UnknownConversation, carol.conversation(group.id()))
    # Bob is removed, and then cannot send.
    await group.remove_members([bob.inbox_id()])
    await bob_events.wait_for("bob's removal", lambda e: isinstance(e, kith.KithEvent.REMOVED))
    error = await expect_error(kith.KithError.NotMember, bobs.send_text("am I still here?"))
    print(f"[{where}] a removed member's send raised {type(error).__name__}: {error}")
    await group.sync()
    after = [m.id for m in await group.messages()]
    assert after == before, (before, after)
    assert (await group.metadata()).name == "Sunday climbing"
    print(f"[{where}] bad calls raised and changed nothing")

    # A wallet that refuses to sign, and one that signs for someone else.
    refusing = EthAccountSigner(Account.create(), refuse=True)
    dave = await kith.create_client(
        options(directory, "dave", node),
        kith.Wallet.from_signer(refusing.account.address, refusing),
    )
    error = await expect_error(kith.KithError.Wallet, dave.register())
    assert "the user said no" in str(error), error
    impostor = EthAccountSigner(Account.create())
    erin = await kith.create_client(
        options(directory, "erin", node),
        kith.Wallet.from_signer(Account.create().address, impostor),
    )
    error = await expect_error(kith.KithError.Wallet, erin.register())
    assert "not" in str(error), error
    print(f"[{where}] a refusing signer and a wrong signer were refused")

    alice_stream.stop()
    bob_stream.stop()
    for client in (alice, bob, carol, dave, erin):
        await client.shutdown()
    await expect_error(kith.KithError.Shutdown, alice.conversations())
    print(f"[{where}] all scenarios passed")


asyncio.run(main())
