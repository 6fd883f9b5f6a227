"""Hypothesis over the three places a client's values enter (issue 20): GenerateRequest.from_dict,
the Socket.IO handlers and the `ovi` parser with the request flags. Text with lone surrogates and
control characters, huge and negative integers, NaN/Infinity and nested JSON: the only exceptions
are the project's own input errors, and whatever is accepted can be stored and sent as UTF-8 JSON.
Bounded by example counts (printed) so the suite stays fast."""

import asyncio
import json

import pytest
import socketio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ovi.errors import InputError
from ovi.request import ALIASES, FIELDS, GenerateRequest

EXAMPLES = 150
SETTINGS = settings(max_examples=EXAMPLES, deadline=None, derandomize=True,
                    suppress_health_check=list(HealthCheck))
COUNTS: dict[str, int] = {}

# Any text, surrogates and control characters included, plus the ones that broke the server.
TEXT = st.one_of(st.text(st.characters(exclude_categories=())),
                 st.sampled_from(["x\ud800", "\udcff", "a\x00b", "\x1b[2J", "\u00b2", "\u0661",
                                  "9" * 30, "64x\u00b2", "tiny", "", " "]))
INTS = st.one_of(st.integers(), st.sampled_from([2**63, 2**64, -(2**63) - 1, 2**64 - 1, -1, 0]))
FLOATS = st.floats(allow_nan=True, allow_infinity=True)
SCALARS = st.one_of(st.none(), st.booleans(), INTS, FLOATS, TEXT)
JSONISH = st.recursive(SCALARS, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                        st.dictionaries(TEXT, inner, max_size=4)),
                       max_leaves=12)
KEYS = st.one_of(st.sampled_from(FIELDS + tuple(ALIASES) + ("id", "priority", "options")), TEXT)
BODIES = st.one_of(st.dictionaries(KEYS, JSONISH, max_size=6),
                   st.fixed_dictionaries({"prompt": TEXT}, optional={"seed": INTS, "n": INTS,
                                                                      "steps": INTS, "priority": INTS}),
                   JSONISH)


def _sendable(value) -> bool:
    json.dumps(value, ensure_ascii=False, allow_nan=False).encode("utf-8")
    return True


def _count(name: str) -> None:
    COUNTS[name] = COUNTS.get(name, 0) + 1


@SETTINGS
@given(BODIES)
def test_from_dict_accepts_only_storable_requests(body):
    _count("from_dict")
    try:
        request = GenerateRequest.from_dict(body, aliases=True)
    except InputError:
        return
    assert _sendable(request.to_dict())  # what was accepted can be stored and sent


@pytest.fixture(scope="module")
def bridge(tmp_path_factory):
    from ovi.queue import JobQueue
    from ovi.server.rest import create_app
    from ovi.server.sio import SocketIOBridge

    queue = JobQueue(tmp_path_factory.mktemp("sio") / "queue.db")
    app = create_app(queue, token="t")
    yield SocketIOBridge(app.state.service), queue
    queue.close()


def test_socketio_handlers_answer_every_payload(bridge):
    bridge_, queue = bridge
    earlier = queue.submit({"prompt": "earlier"})

    @SETTINGS
    @given(BODIES, JSONISH)
    def check(body, ref):
        _count("socketio")
        for ack in (asyncio.run(bridge_.submit_job("sid", body)),
                    asyncio.run(bridge_.cancel_job("sid", {"id": ref})),
                    asyncio.run(bridge_.cancel_job("sid", ref))):
            assert isinstance(ack, dict) and _sendable(ack), ack
            assert ack["ok"] or ack["status"] in (404, 409, 413, 422), ack
        try:
            assert asyncio.run(bridge_.connect("sid", {"QUERY_STRING": ""}, ref)) is None
            assert ref == {"token": "t"} or ref == {"access_token": "t"}
        except socketio.exceptions.ConnectionRefusedError:
            pass

    check()
    assert queue.get(earlier)["request"] == {"prompt": "earlier"}
    assert all(_sendable(job) for job in queue.list(limit=100000))  # nothing unsendable was stored


FLAGS = ["--prompt", "--seed", "--steps", "--n", "--height-width", "--shift", "--solver",
         "--video-guidance-scale", "--slg-layer", "--lora", "--set", "--mode", "--priority"]


@SETTINGS
@given(st.lists(st.tuples(st.sampled_from(FLAGS), TEXT), max_size=4), st.sampled_from(["generate", "submit"]))
def test_the_cli_parser_and_request_flags_raise_only_input_errors(tmp_path_factory, pairs, command):
    from ovi.cli import build_parser
    from ovi.commands.generate import config_from_args, requests_from_args
    from ovi.commands.queue import _request_from_args
    from ovi.queue.requests import validate_request

    _count("cli")
    argv = ["generate"] if command == "generate" else ["queue", "submit", "--prompt", "a"]
    for flag, value in pairs:
        if not (command == "generate" and flag == "--priority"):
            argv += [f"{flag}={value}"]
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:
        assert exc.code == 2
        return
    try:
        if command == "generate":
            requests = requests_from_args(args, config_from_args(args))
            assert all(_sendable(r.to_dict()) for r in requests)
        else:
            assert _sendable(validate_request(_request_from_args(args, with_prompt=True)).to_dict())
    except InputError:
        pass


def test_fuzz_example_counts_are_reported(capsys):
    with capsys.disabled():
        print("\nhypothesis examples: " + ", ".join(f"{k} {v}" for k, v in sorted(COUNTS.items())))
    assert set(COUNTS) == {"from_dict", "socketio", "cli"} and min(COUNTS.values()) >= EXAMPLES // 2
