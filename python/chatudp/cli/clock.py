"""``chatudp time-server`` and ``chatudp time-client``: the strftime time server (port 9000)."""

from __future__ import annotations

import argparse
from typing import Any

from ._args import SERVICE_NOTE, STOP_NOTE, add_program, add_request_options
from ._requests import make_client, run_requests, run_service
from ._terminal import out

TIME_PROMPT = "请输入时间格式(例%Y %m %d)>>: "


def cmd_time_server(args: argparse.Namespace) -> int:
    from ..services import TimeServer

    return run_service("time", TimeServer, args, lambda data, addr: out("===>", data))


def cmd_time_client(args: argparse.Namespace) -> int:
    from ..services import TimeClient

    client = make_client(TimeClient, args)
    return run_requests(args, client, TIME_PROMPT, str)


def register(sub: Any) -> None:
    add_program(
        sub,
        "time-server",
        "the time server: answers time.strftime(format) of local time",
        "An empty datagram means '%Y-%m-%d %X'. Prints each request ('===> b...'). " + SERVICE_NOTE,
        cmd_time_server,
        "127.0.0.1",
        9000,
        "server",
    )
    parser = add_program(
        sub,
        "time-client",
        "the time client: asks the time in the strftime format you type",
        "Prompt '请输入时间格式(例%Y %m %d)>>: '; an empty line asks for '%Y-%m-%d %X'. A lost reply is "
        "reported on stderr and the next line is read. " + STOP_NOTE,
        cmd_time_client,
        "127.0.0.1",
        9000,
        "client",
    )
    add_request_options(parser)
