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
        self.seen = []

    def on_event(self, event):
        self.seen.append(event)
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


TOKEN = bytes([0x42] * 20)
CHAIN = 8453
TOKENS = 10**18


class Chain(kith.GatingVerifier):
    """A chain as the scenarios see it: ERC-20 balances of TOKEN on CHAIN,
    answered through the GatingVerifier callback interface."""

    def __init__(self):
        self.balances = {}
        self.asked = []
        self.down = False

    def verify(self, rule, inbox_id):
        self.asked.append(inbox_id)
        if self.down:
            raise kith.VerifierError.Unavailable("the RPC endpoint does not answer")
        if not isinstance(rule, kith.TokenRule.ERC20):
            raise kith.VerifierError.Unavailable(f"this chain only knows ERC-20 balances, not {rule}")
        known = rule.chain_id == CHAIN and rule.contract == TOKEN
        balance = self.balances.get(inbox_id, 0) if known else 0
        if balance >= int(rule.min_balance):
            return kith.GatingVerdict.SATISFIED(evidence=f"block 21000000: balance {balance}".encode())
        return kith.GatingVerdict.NOT_SATISFIED(reason=f"holds {balance}, needs {rule.min_balance}")


def holders(min_tokens):
    rule = kith.TokenRule.ERC20(chain_id=CHAIN, contract=TOKEN, min_balance=str(min_tokens * TOKENS))
    return kith.Gating(rules=[rule], require=kith.Require.ALL)


def options(directory, name, node):
    path = os.path.join(directory, name)
    url = os.environ.get("KITH_NODE_URL")
    if url:
        return kith.ClientOptions(data_dir=path, node_urls=[url])
    return kith.ClientOptions(data_dir=path, embedded_node=node)


def message_text(event):
    return event.message.text if isinstance(event, kith.KithEvent.MESSAGE) else None


def message_id(event):
    return event.message.id if isinstance(event, kith.KithEvent.MESSAGE) else None


def event_conversation(event):
    if isinstance(event, kith.KithEvent.MESSAGE):
        return event.message.conversation_id
    return getattr(event, "conversation_id", None)


def expect_error_now(kind, call, *args):
    try:
        call(*args)
    except kind as error:
        return error
    raise AssertionError(f"expected {kind.__name__}")


async def member_inboxes(conversation):
    return sorted(m.inbox_id for m in await conversation.members())


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

    # Typed content: a reply, a reaction, a read receipt, an attachment and
    # a type Kith does not know decode on the other side as they were sent.
    chat = await alice.create_group([bob.inbox_id()], kith.GroupOptions(name="Lunch"))
    await bob_events.wait_for(
        "bob joins the lunch group",
        lambda e: isinstance(e, kith.KithEvent.JOINED) and e.conversation_id == chat.id(),
    )
    bobs_chat = await bob.conversation(chat.id())
    question = await chat.send_text("Lunch?")
    sent = [
        kith.Content.REPLY(
            reply=kith.Reply(reference_message_id=question, content=kith.ReplyContent.TEXT(text="Yes, at noon"))
        ),
        kith.Content.REACTION(
            reaction=kith.Reaction(reference_message_id=question, action=kith.ReactionAction.ADDED, content="👍")
        ),
        kith.Content.READ_RECEIPT(),
        kith.Content.ATTACHMENT(
            attachment=kith.Attachment(filename="menu.txt", mime_type="text/plain", data=b"soup\nbread\n")
        ),
        kith.Content.UNKNOWN(content_type="example.com/poll:1.0", body=b"\x08\x01", fallback="A poll: where?"),
    ]
    ids = [await chat.send_content(content) for content in sent]
    await bob_events.wait_for("the last typed message", lambda e: message_id(e) == ids[-1])
    received = {m.id: m for m in await bobs_chat.messages()}
    for message_id_, content in zip(ids, sent):
        message = received[message_id_]
        assert message.sender_inbox_id == alice.inbox_id()
        assert kith.message_content(message) == content, (kith.message_content(message), content)
    reply, reaction, receipt, attachment, unknown = (received[i] for i in ids)
    assert reply.fallback == "Replied to an earlier message: Yes, at noon", reply.fallback
    assert unknown.fallback == "A poll: where?", unknown.fallback
    assert unknown.content_type == "example.com/poll:1.0"
    assert [m.is_listed for m in (reply, reaction, receipt, attachment, unknown)] == [True, False, False, True, True]
    assert all(m.delivery == kith.Delivery.PUBLISHED for m in (reply, reaction, attachment))
    assert kith.message_content(received[question]) == kith.Content.TEXT(text="Lunch?")
    # A raw body with its own fallback, and content that breaks a rule.
    raw = await chat.send_raw("example.com/sticker:1.0", b"\x01\x02", fallback="[a sticker]")
    got = await bob_events.wait_for("the raw message", lambda e: message_id(e) == raw)
    assert kith.message_content(got.message) == kith.Content.UNKNOWN(
        content_type="example.com/sticker:1.0", body=b"\x01\x02", fallback="[a sticker]"
    )
    await expect_error(
        kith.KithError.Content,
        chat.send_content(
            kith.Content.REACTION(
                reaction=kith.Reaction(reference_message_id=question, action=kith.ReactionAction.ADDED, content="")
            )
        ),
    )
    await expect_error(
        kith.KithError.InvalidInput,
        chat.send_content(
            kith.Content.REPLY(reply=kith.Reply(reference_message_id="beef", content=kith.ReplyContent.TEXT(text="?")))
        ),
    )
    print(f"[{where}] a reply, reaction, read receipt, attachment and unknown type round-tripped")

    # A remote attachment: encrypted here, its key sent in a message,
    # opened on the other side from the uploaded bytes.
    photo = kith.Attachment(filename="summit.jpg", mime_type="image/jpeg", data=os.urandom(1536 * 1024))
    encrypted = kith.remote_attachment_encrypt(photo, "https://files.example.com/summit")
    assert len(encrypted.ciphertext) == encrypted.remote.content_length
    assert encrypted.remote.filename == "summit.jpg" and len(encrypted.remote.secret) == 32
    remote_id = await chat.send_content(kith.Content.REMOTE_ATTACHMENT(remote_attachment=encrypted.remote))
    got = await bob_events.wait_for("the remote attachment", lambda e: message_id(e) == remote_id)
    remote = kith.message_content(got.message)
    assert isinstance(remote, kith.Content.REMOTE_ATTACHMENT), remote
    assert remote.remote_attachment == encrypted.remote
    assert kith.remote_attachment_decrypt(remote.remote_attachment, encrypted.ciphertext) == photo
    tampered = bytearray(encrypted.ciphertext)
    tampered[0] ^= 1
    expect_error_now(kith.KithError.Content, kith.remote_attachment_decrypt, remote.remote_attachment, bytes(tampered))
    expect_error_now(kith.KithError.Content, kith.remote_attachment_encrypt, photo, "http://files.example.com/x")
    short_key = kith.RemoteAttachment(
        url=encrypted.remote.url,
        content_digest=encrypted.remote.content_digest,
        secret=b"short",
        nonce=encrypted.remote.nonce,
        content_length=encrypted.remote.content_length,
        filename=None,
    )
    expect_error_now(kith.KithError.InvalidInput, kith.remote_attachment_decrypt, short_key, encrypted.ciphertext)
    print(f"[{where}] a remote attachment was encrypted, sent and decrypted")

    # Pages of messages: newest first, two at a time, the cursor going on
    # without repeats; listed_only leaves reactions and receipts out.
    for text in ("one", "two", "three"):
        await chat.send_text(text)
    text_type = received[question].content_type
    query = kith.MessageQuery(direction=kith.Direction.DESCENDING, limit=2, content_types=[text_type])
    pages = []
    while True:
        page = await chat.find_messages(query)
        pages.append([m.text for m in page.messages])
        if page.next is None:
            break
        assert len(page.messages) == 2
        query.after = page.next
    assert pages == [["three", "two"], ["one", "Lunch?"], []], pages
    everything, cursor = [], None
    while True:
        page = await chat.find_messages(kith.MessageQuery(direction=kith.Direction.DESCENDING, limit=2, after=cursor))
        everything += [m.id for m in page.messages]
        cursor = page.next
        if cursor is None:
            break
    assert len(everything) == len(set(everything)), everything
    assert sorted(everything) == sorted(m.id for m in await chat.messages())
    listed = [m.id for m in (await chat.find_messages(kith.MessageQuery(listed_only=True))).messages]
    assert ids[0] in listed and ids[1] not in listed and ids[2] not in listed, listed
    assert ids[1] in everything and ids[2] in everything
    published = await chat.find_messages(kith.MessageQuery(delivery=[kith.Delivery.PUBLISHED], limit=1000))
    assert all(m.delivery == kith.Delivery.PUBLISHED for m in published.messages)
    print(f"[{where}] messages paged newest first, and listed_only hid the reaction and receipt")

    # The conversation list: most recently active first, by kind.
    await group.send_text("newest in the climbing group")
    listing = await alice.list_conversations(kith.ConversationQuery())
    assert listing[0].conversation.id() == group.id(), [i.conversation.id() for i in listing]
    assert listing[0].last_message.text == "newest in the climbing group"
    assert listing[0].kind == kith.ConversationKind.GROUP and listing[0].active
    times = [i.last_activity_ms for i in listing]
    assert times == sorted(times, reverse=True), times
    assert {i.conversation.id() for i in listing} >= {group.id(), migrated.id(), dm.id(), chat.id()}
    await chat.send_text("now the lunch group")
    listing = await alice.list_conversations(kith.ConversationQuery(limit=2))
    assert [i.conversation.id() for i in listing] == [chat.id(), group.id()]
    dms = await alice.list_conversations(kith.ConversationQuery(kind=kith.ConversationKind.DM))
    assert [i.conversation.id() for i in dms] == [dm.id()], dms
    assert dms[0].kind == kith.ConversationKind.DM and dms[0].last_message.text == "just us"
    print(f"[{where}] the conversation list ran by last activity and filtered by kind")

    # A conversation's own event stream sees its messages only.
    chat_events = Queue()
    chat_stream = await bobs_chat.stream_events(chat_events)
    await group.send_text("not for the lunch stream")
    await bob_events.wait_for("the climbing message", lambda e: message_text(e) == "not for the lunch stream")
    await chat.send_text("for the lunch stream")
    await chat_events.wait_for("the lunch message", lambda e: message_text(e) == "for the lunch stream")
    chat_stream.stop()
    assert chat_events.seen, "the lunch stream saw nothing"
    assert all(event_conversation(e) == chat.id() for e in chat_events.seen), chat_events.seen
    assert all(message_text(e) != "not for the lunch stream" for e in chat_events.seen)
    print(f"[{where}] a conversation's event stream carried only its own events")

    # A token-gated group: a Python verifier answers for the chain; an
    # inbox that holds too little is refused and nothing changes, one
    # that holds enough is admitted, with the verifier's evidence.
    chain = Chain()
    frank_options = options(directory, "frank", node)
    frank_options.gating_verifier = chain
    frank = await kith.create_client(frank_options, kith.Wallet.generate())
    await frank.register()
    chain.balances[bob.inbox_id()] = 500 * TOKENS
    chain.balances[carol.inbox_id()] = 99 * TOKENS
    gated = await frank.create_group([bob.inbox_id()], kith.GroupOptions(name="Holders", gating=holders(100)))
    await bob_events.wait_for(
        "bob joins the gated group",
        lambda e: isinstance(e, kith.KithEvent.JOINED) and e.conversation_id == gated.id(),
    )
    gating = (await gated.metadata()).gating
    assert gating.rules == holders(100).rules and gating.require == kith.Require.ALL, gating
    error = await expect_error(kith.KithError.GatingRefused, gated.add_members([carol.inbox_id()]))
    assert carol.inbox_id() in str(error) and "needs" in str(error), error
    assert await member_inboxes(gated) == sorted([frank.inbox_id(), bob.inbox_id()])
    chain.down = True
    error = await expect_error(kith.KithError.GatingUnavailable, gated.add_members([carol.inbox_id()]))
    assert "does not answer" in str(error), error
    chain.down = False
    chain.balances[carol.inbox_id()] = 100 * TOKENS
    await gated.add_members([carol.inbox_id()])
    assert await member_inboxes(gated) == sorted([frank.inbox_id(), bob.inbox_id(), carol.inbox_id()])
    admissions = (await gated.metadata()).gating.admissions
    assert [a.inbox_id for a in admissions] == [carol.inbox_id()], admissions
    assert admissions[0].evidence == [f"block 21000000: balance {100 * TOKENS}".encode()]
    bobs_gated = await bob.conversation(gated.id())
    await bob_events.wait_for(
        "carol joins the gated group",
        lambda e: isinstance(e, kith.KithEvent.MEMBERS_CHANGED)
        and e.conversation_id == gated.id()
        and carol.inbox_id() in [m.inbox_id for m in e.added],
    )
    assert (await bobs_gated.metadata()).gating.admissions == admissions
    # Without a verifier a token rule cannot be checked; bad rules are
    # refused before anything is sent.
    await expect_error(
        kith.KithError.GatingUnavailable,
        alice.create_group([bob.inbox_id()], kith.GroupOptions(gating=holders(1))),
    )
    bad_balance = kith.TokenRule.ERC20(chain_id=CHAIN, contract=TOKEN, min_balance="lots")
    bad_contract = kith.TokenRule.ERC20(chain_id=CHAIN, contract=TOKEN[:19], min_balance="1")
    for rule in (bad_balance, bad_contract):
        await expect_error(
            kith.KithError.InvalidInput,
            frank.create_group([], kith.GroupOptions(gating=kith.Gating(rules=[rule], require=kith.Require.ALL))),
        )
    print(f"[{where}] a gated group refused an inbox without the tokens and admitted one with them")

    # An allowlist needs no verifier: every member checks it itself.
    allowlist = kith.Gating(rules=[kith.TokenRule.ALLOWLIST(inbox_ids=[bob.inbox_id()])], require=kith.Require.ALL)
    listed_group = await alice.create_group([bob.inbox_id()], kith.GroupOptions(gating=allowlist))
    await expect_error(kith.KithError.GatingRefused, listed_group.add_members([carol.inbox_id()]))
    assert await member_inboxes(listed_group) == sorted([alice.inbox_id(), bob.inbox_id()])
    wider = kith.Gating(
        rules=[kith.TokenRule.ALLOWLIST(inbox_ids=[bob.inbox_id(), carol.inbox_id()])], require=kith.Require.ALL
    )
    await listed_group.set_gating(wider)
    await listed_group.add_members([carol.inbox_id()])
    assert carol.inbox_id() in await member_inboxes(listed_group)
    rules = (await listed_group.metadata()).gating.rules
    assert len(rules) == 1 and sorted(rules[0].inbox_ids) == sorted(wider.rules[0].inbox_ids), rules
    assert (await group.metadata()).gating.rules == [], "an ordinary group is not gated"
    print(f"[{where}] an allowlist-gated group worked without a verifier")

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
    after = await group.messages()
    # The one message the calls left is the removal's own transcript entry.
    assert [m.id for m in after[: len(before)]] == before, (before, after)
    added = [kith.message_content(m) for m in after[len(before) :]]
    assert len(added) == 1 and isinstance(added[0], kith.Content.GROUP_UPDATED), added
    assert added[0].group_updated.removed == [bob.inbox_id()], added
    assert added[0].group_updated.by_inbox_id == alice.inbox_id(), added
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
    for client in (alice, bob, carol, dave, erin, frank):
        await client.shutdown()
    await expect_error(kith.KithError.Shutdown, alice.conversations())
    print(f"[{where}] all scenarios passed")


asyncio.run(main())
