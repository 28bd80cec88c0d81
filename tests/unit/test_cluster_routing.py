"""Redis Cluster, the parts without a server: the ``redis+cluster://`` URL, the producer's
routing of packed commands by hash slot (the slot table, MOVED and ASK replies, given fake
nodes), and the consumer's one XREADGROUP per slot (given a fake cluster client)."""

from __future__ import annotations

import asyncio
import itertools
import threading
from collections.abc import Callable
from typing import Any

import hiredis
import pytest
import redis
from redis.crc import key_slot

from common.config import hide_password, settings_from_mapping
from common.envelope import raw_key
from common.errors import ConfigError, FatalError, TransientError
from common.redis_url import redis_client, redis_options, stream_client
from consumer.cluster_reads import ClusterReads
from producer.wire import (
    MAX_REDIRECTS,
    SLOTS,
    RedisWire,
    XaddPacker,
    command,
    command_spans,
    pack_runs,
    redirection,
    slot_table,
)

OKX, BINANCE = raw_key("okx"), raw_key("binance")
OKX_SLOT, BINANCE_SLOT = key_slot(OKX.encode()), key_slot(BINANCE.encode())

# -- the URL ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "nodes", "more"),
    [
        ("redis+cluster://10.0.0.5:7000", [("10.0.0.5", 7000)], {}),
        ("redis+cluster://h1:7000,h2:7001,h3/0", [("h1", 7000), ("h2", 7001), ("h3", 6379)], {}),
        ("redis+cluster://h1:7000/", [("h1", 7000)], {}),
        ("redis+cluster://[::1]:7000,h2:7001", [("::1", 7000), ("h2", 7001)], {}),
        (
            "redis+cluster://tv:p%40ss@h1:7000,h2:7001/0",
            [("h1", 7000), ("h2", 7001)],
            {"username": "tv", "password": "p@ss"},
        ),
        ("redis+cluster://h1:7000?password=pw&db=0", [("h1", 7000)], {"password": "pw"}),
    ],
)
def test_a_cluster_url_names_its_nodes(url: str, nodes: list[Any], more: dict[str, Any]) -> None:
    options = redis_options(url)
    assert list(options.cluster) == nodes
    assert (options.host, options.port, options.db, options.path) == (*nodes[0], 0, None)
    assert options.tls is None
    for name, value in more.items():
        assert getattr(options, name) == value
    settings = settings_from_mapping({"redis": {"url": url}}, env={})
    assert settings.redis.url == url


def test_a_tls_cluster_url_reads_tls_as_rediss_does() -> None:
    options = redis_options("rediss+cluster://tv:pw@h1:7000,h2:7001?ssl_cert_reqs=none")
    single = redis_options("rediss://tv:pw@h1:7000?ssl_cert_reqs=none")
    assert options.tls == single.tls and options.tls is not None
    assert options.where() == "cluster h1:7000,h2:7001 (TLS)"
    assert redis_options("redis+cluster://[::1]:7000").where() == "cluster [::1]:7000"


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("redis+cluster://h1:7000/3", "only database 0"),
        ("redis+cluster://h1:7000?db=2", "only database 0"),
        ("redis+cluster://", "is not host:port"),
        ("redis+cluster://h1:7000,,h2:7001", "is not host:port"),
        ("redis+cluster://h1:port", "unreadable"),
        ("redis+cluster://h1:7000/tickvault", "not a database number"),
        ("redis+cluster://h1:7000?socket_timeout=1", "'socket_timeout' not supported"),
        ("redis+cluster://h1:7000?ssl_ca_certs=/ca.pem", "with rediss:// only"),
        ("unix+cluster:///s.sock", "not a Redis URL"),
    ],
)
def test_a_cluster_url_without_one_meaning_is_a_config_error(url: str, says: str) -> None:
    with pytest.raises(ConfigError) as info:
        redis_options(url)
    assert info.value.key == "redis.url" and says in str(info.value) and info.value.fix
    with pytest.raises(ConfigError, match=r"redis\.url"):
        RedisWire(url)


def test_the_password_of_a_cluster_url_is_hidden() -> None:
    url = "redis+cluster://tv:hunter2@h1:7000,h2:7001/0"
    assert hide_password(url) == "redis+cluster://tv:***@h1:7000,h2:7001/0"
    assert "hunter2" not in repr(redis_options(url))


def test_one_server_clients_refuse_a_cluster_url_and_stream_clients_take_both() -> None:
    with pytest.raises(ConfigError, match="Redis Cluster URL"):
        redis_client("redis+cluster://127.0.0.1:1/0")
    client = stream_client("redis://127.0.0.1:1/0")
    assert isinstance(client, redis.Redis)
    client.close()


def test_the_raw_connection_of_a_cluster_authenticates_and_never_selects() -> None:
    wire = RedisWire("redis+cluster://tv:pw@h1:7000,h2:7001/0")
    reader = hiredis.Reader()
    reader.feed(wire._setup)
    assert [reader.gets(), reader.gets(), reader.gets()] == [
        [b"AUTH", b"tv", b"pw"], [b"PING"], False,
    ]  # fmt: skip
    assert wire._cluster is not None and not wire.connected
    assert RedisWire("redis://h1:7000/2")._cluster is None  # one server: no routing at all


# -- splitting packed commands ------------------------------------------------------------------


def test_packed_commands_are_split_with_their_keys() -> None:
    okx = XaddPacker(OKX, "okx", "", "okx/0")
    binance = XaddPacker(BINANCE, "binance", "", "binance/0")
    frames, sizes = pack_runs(
        [
            (okx, b'{"a":1}', False, 1, 10),
            (okx, b'{"a":2}\r\n*3', False, 2, 11),  # a run; a frame that looks like RESP
            (binance, b"\x00\xff", True, 7, 12),
        ]
    )
    others = (
        command(b"XINFO", b"GROUPS", OKX.encode())
        + command(b"ping")
        + command(b"HSET", b"tickvault:feeds:{p1}", b"f", b"v")
        + command(b"XTRIM", BINANCE.encode(), b"MINID", b"~", b"1-0")
    )
    payload = frames + others
    spans = command_spans(payload)
    assert [key for _, _, key in spans] == [
        OKX.encode(), BINANCE.encode(), OKX.encode(), None, b"tickvault:feeds:{p1}",
        BINANCE.encode(),
    ]  # fmt: skip
    assert len(sizes) == 2
    assert b"".join(payload[start:end] for start, end, _ in spans) == payload
    assert spans[0][0] == 0 and all(a[1] == b[0] for a, b in itertools.pairwise(spans))


@pytest.mark.parametrize("cut", [1, 10, -3])
def test_a_payload_cut_short_is_refused(cut: int) -> None:
    payload = command(b"XADD", OKX.encode(), b"*", b"f", b"x")
    with pytest.raises(ValueError):
        command_spans(payload[:cut])
    with pytest.raises(ValueError):
        command_spans(b"PING\r\n")


# -- the slot table and redirections --------------------------------------------------------------


def _slots_reply(*ranges: tuple[int, int, bytes, int]) -> list[Any]:
    return [
        [a, b, [host, port, b"id"], [b"10.0.0.9", 9999, b"replica"]] for a, b, host, port in ranges
    ]


def test_the_slot_table_maps_every_slot_to_its_primary() -> None:
    table = slot_table(_slots_reply((0, 99, b"10.0.0.1", 7000), (100, 16383, b"", 7001)), "seed")
    assert len(table) == SLOTS
    assert table[0] == table[99] == ("10.0.0.1", 7000)
    assert table[100] == table[16383] == ("seed", 7001)  # "" : the node asked
    partial = slot_table(_slots_reply((0, 10, b"?", 7000)), "seed")
    assert partial[10] == ("seed", 7000) and partial[11] is None
    with pytest.raises(TransientError):
        slot_table(hiredis.ReplyError("ERR x"), "seed")


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        (hiredis.ReplyError("MOVED 3999 127.0.0.1:6381"), (True, 3999, ("127.0.0.1", 6381))),
        (hiredis.ReplyError("ASK 3999 10.0.0.2:6380"), (False, 3999, ("10.0.0.2", 6380))),
        (hiredis.ReplyError("MOVED 12 :6380"), (True, 12, ("asked", 6380))),
        (hiredis.ReplyError("MOVED 12 ::1:6380"), (True, 12, ("::1", 6380))),
        (hiredis.ReplyError("TRYAGAIN Multiple keys request during rehashing"), None),
        (hiredis.ReplyError("ERR MOVED"), None),
        (b"MOVED 1 h:1", None),
    ],
)
def test_redirections_are_read_from_error_replies(reply: object, expected: object) -> None:
    assert redirection(reply, "asked") == expected


# -- routing, given fake nodes ------------------------------------------------------------------

A, B = ("a", 1), ("b", 2)


class FakeNode:
    """A node that answers by ``answer(command) -> reply`` and records what it was sent."""

    def __init__(self, answer: Callable[[list[bytes]], object]) -> None:
        self.answer = answer
        self.sent: list[list[bytes]] = []
        self.fail: Exception | None = None

    async def _roundtrip(self, payload: bytes, count: int) -> tuple[list[object], list[Any]]:
        if self.fail is not None:
            raise self.fail
        reader = hiredis.Reader()
        reader.feed(payload)
        commands = [reader.gets() for _ in range(count)]
        assert reader.gets() is False  # exactly ``count`` commands
        self.sent += commands  # type: ignore[arg-type]
        replies = [self.answer(c) for c in commands]  # type: ignore[arg-type]
        return replies, [r for r in replies if isinstance(r, hiredis.ReplyError)]

    async def close(self) -> None:
        pass


class World:
    """Two nodes; ``owner`` says which one serves okx's slot (binance's is always A's)."""

    def __init__(self) -> None:
        self.owner = A
        self.ids = 0
        self.redirect: Callable[[list[bytes]], object | None] = lambda c: None
        self.nodes = {
            A: FakeNode(lambda c: self.answer(A, c)),
            B: FakeNode(lambda c: self.answer(B, c)),
        }

    def answer(self, me: tuple[str, int], cmd: list[bytes]) -> object:
        if cmd[0] == b"CLUSTER":
            other = (OKX_SLOT, OKX_SLOT, self.owner[0].encode(), self.owner[1])
            return _slots_reply((0, OKX_SLOT - 1, b"a", 1), other, (OKX_SLOT + 1, 16383, b"a", 1))
        if cmd[0] in (b"ASKING", b"PING"):
            return b"OK" if cmd[0] == b"ASKING" else b"PONG"
        special = self.redirect(cmd) if me == A else None
        if special is not None:
            return special
        self.ids += 1
        return b"%d-0" % self.ids

    def wire(self) -> RedisWire:
        wire = RedisWire("redis+cluster://a:1,b:2/0")
        assert wire._cluster is not None
        wire._cluster.nodes = dict(self.nodes)  # type: ignore[arg-type]
        return wire

    def sent(self, node: tuple[str, int], name: bytes = b"XADD") -> list[list[bytes]]:
        return [c for c in self.nodes[node].sent if c[0] == name]


def _xadds() -> tuple[bytes, int]:
    okx = XaddPacker(OKX, "okx", "", "okx/0")
    binance = XaddPacker(BINANCE, "binance", "", "binance/0")
    pending = [(okx, b"o1", False, 1, 1), (binance, b"b1", False, 1, 2)]
    pending += [(okx, b"o3", False, 3, 3), (binance, b"b3", False, 3, 4)]
    payload, sizes = pack_runs(pending)
    return payload, len(sizes)


def _frames(commands: list[list[bytes]]) -> list[bytes]:
    return [c[4] for c in commands]


def test_commands_go_to_their_slots_node_and_replies_come_back_in_order() -> None:
    world = World()
    world.owner = B
    wire = world.wire()
    payload, count = _xadds()
    replies = asyncio.run(wire.execute(payload, count))
    assert len(replies) == 4 and all(isinstance(r, bytes) for r in replies)
    assert _frames(world.sent(B)) == [b"o1", b"o3"]  # okx's stream, in its order
    assert _frames(world.sent(A)) == [b"b1", b"b3"]
    assert len(world.sent(A, b"CLUSTER")) == 1  # the map, asked once at the first call
    asyncio.run(wire.execute(payload, count))
    assert len(world.sent(A, b"CLUSTER")) == 1


def test_a_moved_reply_refreshes_the_map_and_resends_to_the_new_node() -> None:
    world = World()
    wire = world.wire()
    asyncio.run(wire.execute(*_xadds()))  # the map: okx on A
    world.owner = B  # the slot moves: A answers MOVED from now on

    def moved(cmd: list[bytes]) -> object | None:
        if cmd[1] == OKX.encode():
            return hiredis.ReplyError(f"MOVED {OKX_SLOT} b:2")
        return None

    world.redirect = moved
    replies = asyncio.run(wire.execute(*_xadds()))
    assert all(isinstance(r, bytes) for r in replies)
    assert _frames(world.sent(B)) == [b"o1", b"o3"]  # resent, in order
    assert len(world.sent(A, b"CLUSTER")) == 2  # asked again after the MOVED
    asyncio.run(wire.execute(*_xadds()))  # straight to B now: no more MOVED
    assert _frames(world.sent(B)) == [b"o1", b"o3"] * 2
    assert len(world.sent(A, b"CLUSTER")) == 2


def test_an_ask_reply_sends_once_to_the_node_named_after_asking() -> None:
    world = World()
    wire = world.wire()
    world.redirect = lambda c: (
        hiredis.ReplyError(f"ASK {OKX_SLOT} :2") if c[1] == OKX.encode() else None
    )  # ("" host: the host of the node that answered, here "a": a fake, fine)
    world.nodes[("a", 2)] = world.nodes[B]
    assert wire._cluster is not None
    wire._cluster.nodes[("a", 2)] = world.nodes[B]  # type: ignore[assignment]
    replies = asyncio.run(wire.execute(*_xadds()))
    assert all(isinstance(r, bytes) for r in replies)
    sent = world.nodes[B].sent
    assert [c[0] for c in sent] == [b"ASKING", b"XADD", b"ASKING", b"XADD"]
    assert len(world.sent(A, b"CLUSTER")) == 1  # ASK does not change the map
    assert wire._cluster.table is not None and wire._cluster.table[OKX_SLOT] == A


def test_redirections_without_end_are_a_transient_error() -> None:
    world = World()
    wire = world.wire()
    world.redirect = lambda c: hiredis.ReplyError(f"MOVED {OKX_SLOT} a:1")
    with pytest.raises(TransientError, match="redirected"):
        asyncio.run(wire.execute(command(b"XADD", OKX.encode(), b"*", b"f", b"x"), 1))
    assert len(world.sent(A, b"XADD")) == MAX_REDIRECTS  # sent again after each MOVED
    assert len(world.sent(A, b"CLUSTER")) > MAX_REDIRECTS  # the map asked again each time


@pytest.mark.parametrize("code", ["TRYAGAIN Multiple keys", "CLUSTERDOWN The cluster is down"])
def test_a_cluster_in_flux_is_retried_with_the_map_asked_again(code: str) -> None:
    world = World()
    wire = world.wire()
    world.redirect = lambda c: hiredis.ReplyError(code) if c[1] == OKX.encode() else None
    with pytest.raises(TransientError, match=code.split()[0]):
        asyncio.run(wire.execute(*_xadds()))
    assert not wire.connected  # the map is asked again before the next try
    world.redirect = lambda c: None
    asyncio.run(wire.execute(*_xadds()))
    assert len(world.sent(A, b"CLUSTER")) == 2


def test_a_refusal_from_a_node_is_fatal_and_an_unreachable_node_transient() -> None:
    world = World()
    wire = world.wire()
    world.redirect = lambda c: hiredis.ReplyError("WRONGTYPE Operation against a key")
    with pytest.raises(FatalError, match="WRONGTYPE"):
        asyncio.run(wire.execute(*_xadds()))
    world.redirect = lambda c: None
    world.owner = B
    asyncio.run(wire.connect())
    world.nodes[B].fail = TransientError("redis connection lost: reset")
    with pytest.raises(TransientError, match="reset"):
        asyncio.run(wire.execute(*_xadds()))
    assert not wire.connected


def test_no_node_answering_the_map_is_a_transient_error() -> None:
    world = World()
    for node in world.nodes.values():
        node.fail = TransientError("refused")
    wire = world.wire()
    with pytest.raises(TransientError, match="no node of the redis cluster a:1,b:2"):
        asyncio.run(wire.connect())
    world.nodes[B].fail = None
    asyncio.run(wire.connect())  # any node's map will do
    assert wire.connected


# -- the consumer's reads, given a fake cluster client ----------------------------------------


class FakeClusterClient:
    """Answers XREADGROUP per node from ``entries``; a blocking read on a stream with no
    entries waits for that stream's event. Records every read's keys."""

    def __init__(self) -> None:
        self.entries: dict[str, list[Any]] = {}
        self.wake = {OKX: threading.Event(), BINANCE: threading.Event()}
        self.fail: dict[str, Exception] = {}
        self.reads: list[list[str]] = []
        self.lock = threading.Lock()

    def arrive(self, key: str, entry: Any) -> None:
        with self.lock:
            self.entries.setdefault(key, []).append(entry)
        self.wake[key].set()

    def get_node_from_key(self, key: str) -> Any:
        return type("Node", (), {"redis_connection": None, "name": key})()

    def execute_command(self, *args: Any, target_nodes: Any) -> Any:
        streams = args[args.index("STREAMS") + 1 :]
        keys = list(streams[: len(streams) // 2])
        with self.lock:
            self.reads.append(keys)
        [key] = keys
        assert target_nodes.name == key
        if key in self.fail:
            raise self.fail.pop(key)
        if "BLOCK" in args and not self.entries.get(key):
            self.wake[key].wait(args[args.index("BLOCK") + 1] / 1000)
            self.wake[key].clear()
        with self.lock:
            got, self.entries[key] = self.entries.get(key, []), []
        return [[key.encode(), got]] if got else None


def _reads() -> tuple[FakeClusterClient, ClusterReads]:
    client = FakeClusterClient()
    return client, ClusterReads(client, "tickvault", "c1")  # type: ignore[arg-type]


def _entries(pairs: list[Any]) -> dict[str, list[Any]]:
    return {k.decode(): e for k, e in pairs if e}


def test_one_xreadgroup_per_slot_and_the_first_blocked_answer_returns() -> None:
    client, reads = _reads()
    live = {OKX: ">", BINANCE: ">"}
    client.entries[OKX] = [(b"1-0", [b"f", b"x"])]
    assert _entries(reads.read(live, 10, 0)) == {OKX: [(b"1-0", [b"f", b"x"])]}
    assert all(len(keys) == 1 for keys in client.reads)  # never two keys in one command
    threading.Timer(0.05, client.arrive, (BINANCE, "b")).start()
    got = reads.read(live, 10, 5_000)  # both drained: both wait; binance answers first
    assert _entries(got) == {BINANCE: ["b"]}
    waiting = len(client.reads)
    threading.Timer(0.05, client.arrive, (OKX, "o")).start()
    later = reads.read(live, 10, 5_000)  # okx's read still waits: not sent again
    assert _entries(later) == {OKX: ["o"]}
    assert client.reads[waiting:] == [[BINANCE], [BINANCE]]  # a look, then a wait
    client.arrive(BINANCE, "b2")  # binance waits again: collected at the stop
    assert _entries(reads.finish(5.0)) == {BINANCE: ["b2"]}
    reads.close()
    assert all(len(keys) == 1 for keys in client.reads)  # never two keys in one command


def test_a_failed_read_loses_no_entry_read_beside_it() -> None:
    client, reads = _reads()
    live = {OKX: ">", BINANCE: ">"}
    client.entries[OKX] = ["o"]
    client.fail[BINANCE] = redis.ConnectionError("reset")  # read after okx's (live's order)
    with pytest.raises(redis.ConnectionError):
        reads.read(live, 10, 0)
    assert client.reads == [[OKX], [BINANCE]]
    again = reads.read(live, 10, 0)
    assert _entries(again) == {OKX: ["o"]}  # held back, handed out now
    reads.close()


def test_at_the_stop_the_reads_still_waiting_are_collected() -> None:
    client, reads = _reads()
    live = {OKX: ">", BINANCE: ">"}
    threading.Timer(0.05, client.arrive, (OKX, "o")).start()
    assert _entries(reads.read(live, 10, 5_000)) == {OKX: ["o"]}
    client.arrive(BINANCE, "b")
    assert _entries(reads.finish(5.0)) == {BINANCE: ["b"]}
    assert reads.finish(5.0) == []
    reads.close()
