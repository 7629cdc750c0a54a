"""docs/protocol.md's examples are what a client sees: every transcript block is played against a real gateway.

A transcript line is `USER > FRAME` (USER sends FRAME as written), `USER < FRAME` (the next frame USER receives
is FRAME, byte for byte), `USER connects to PATH` (USER opens its connection with that path and query instead of
the default `/ws?user=USER`) or `USER closes`. Every user a block names connects before its first line, in the order
they first appear, unless its first line is its own `connects to`. After the block every
user still connected must have received nothing else: a ping's pong is the next frame each one gets.
"""

from __future__ import annotations

import asyncio
import os
import re

import pytest
from websockets.asyncio.client import connect

from conftest import TOKEN, start_gateway

DOC = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs", "protocol.md")
BLOCK = re.compile(r"^```transcript\n(.*?)^```", re.S | re.M)
LINE = re.compile(r"^([A-Za-z0-9_.:-]+) (?:([<>]) (.+)|connects to (/\S+)|(closes))$")
FRAME_TIMEOUT_S = 10


def transcripts() -> list[list[str]]:
    with open(DOC, encoding="utf-8") as f:
        return [block.strip().splitlines() for block in BLOCK.findall(f.read())]


def test_the_doc_has_transcripts_and_every_line_parses():
    blocks = transcripts()
    assert len(blocks) >= 4
    bad = [line for block in blocks for line in block if not LINE.match(line)]
    assert bad == []


@pytest.fixture(scope="module")
def doc_gateway(tmp_path_factory):
    gw = start_gateway(tmp_path_factory.mktemp("doc-gw"))
    yield gw
    gw.stop()


async def play(gw, lines: list[str]) -> None:
    sockets = {}

    async def session(user, path=None):
        if user not in sockets:
            sockets[user] = await connect(f"ws://127.0.0.1:{gw.port}{path or f'/ws?user={user}'}",
                                          additional_headers={"Authorization": f"Bearer {TOKEN}"})
        return sockets[user]

    try:
        first = {}
        for line in lines:
            first.setdefault(line.split(" ", 1)[0], line)
        for user, line in first.items():
            if " connects to " not in line:
                await session(user)
        for n, line in enumerate(lines, 1):
            user, direction, frame, path, closes = LINE.match(line).groups()
            where = f"line {n}: {line}"
            if path:
                assert user not in sockets, where
                await session(user, path)
            elif closes:
                await sockets.pop(user).close()
            elif direction == ">":
                await (await session(user)).send(frame)
            else:
                got = await asyncio.wait_for((await session(user)).recv(decode=False), FRAME_TIMEOUT_S)
                assert got == frame.encode(), where
        for user, ws in sockets.items():  # nothing else arrived: the pong is each user's next frame
            await ws.send('{"type":"ping","ts":-1}')
            assert await asyncio.wait_for(ws.recv(decode=False), FRAME_TIMEOUT_S) == b'{"type":"pong","ts":-1}', user
    finally:
        for ws in sockets.values():
            await ws.close()


@pytest.mark.parametrize("index", range(len(transcripts())))
def test_a_transcript_plays_byte_for_byte(doc_gateway, index):
    asyncio.run(play(doc_gateway, transcripts()[index]))
