"""Replay of recorded flows from CSV: columns, routing, and errors naming the line."""

from __future__ import annotations

import ipaddress

import numpy as np
import pytest

from egressgw.errors import InputError
from egressgw.sim.flows import AddressBook
from egressgw.sim.replay import ReplayFlows
from egressgw.sim.routing import EgressTable, Routes

EGRESS = [ipaddress.ip_address("10.1.0.0")]


def replay(text, egress_ips=EGRESS):
    routes = Routes(EgressTable(), [])
    book = AddressBook()
    flows = ReplayFlows(text, source="flows.csv", routes=routes, book=book,
                        egress_ips=egress_ips)
    return flows, book, routes


def test_rows_become_sorted_columns_with_header_in_any_order():
    text = (
        "protocol,start,duration,source,destination,port,end\n"
        "tcp,5,30,10.244.0.1,10.2.0.0,8080,rst\n"
        "udp,1.5,,10.244.0.2,10.96.0.10,53,idle\n"
        "icmp,3,1,10.244.0.1,10.2.0.0,0,fin\n"
    )
    flows, book, routes = replay(text)
    f = flows.flows
    assert f.start.tolist() == [1.5, 3.0, 5.0]
    assert f.duration[0] == np.inf
    assert f.end.tolist() == [2, 0, 1]
    assert f.proto.tolist() == [17, 1, 6]
    assert f.dport.tolist() == [53, 0, 8080]
    assert [str(book.ips[i]) for i in f.dst] == ["10.96.0.10", "10.2.0.0", "10.2.0.0"]
    assert routes.egress.ips == EGRESS and set(f.egress.tolist()) == {0}
    # Windows serve the rows whose start falls in them.
    assert flows.window(2.0, 5.0).start.tolist() == [3.0]
    assert flows.expected(0.0, 10.0) == 3


def test_headerless_rows_use_the_documented_order_and_egress_column():
    flows, _, routes = replay("0,10,10.244.0.1,10.2.0.0,8080,tcp,fin,10.1.0.9,40000\n", [])
    assert flows.flows.sport.tolist() == [40000]
    assert [str(ip) for ip in routes.egress.ips] == ["10.1.0.9"]


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ("x,10,10.244.0.1,10.2.0.0,8080,tcp", "flows.csv:2: start: 'x' is not a number"),
        ("0,-1,10.244.0.1,10.2.0.0,8080,tcp", "flows.csv:2: duration: must not be negative"),
        ("0,1,10.244.0.300,10.2.0.0,8080,tcp",
         "flows.csv:2: source: invalid IP address '10.244.0.300'"),
        ("0,1,10.244.0.1,10.2.0.0,http,tcp", "flows.csv:2: port: 'http' is not a port"),
        ("0,1,10.244.0.1,10.2.0.0,80,gre", "flows.csv:2: protocol: unknown protocol 'gre'"),
        ("0,1,10.244.0.1,2001:db8::1,80,tcp", "flows.csv:2: destination: source and dest"),
        ("0,1,10.244.0.1", "flows.csv:2: expected at least 6 columns"),
    ],
)
def test_bad_rows_name_their_line(row, message):
    with pytest.raises(InputError) as err:
        replay(f"0,1,10.244.0.9,10.2.0.0,80,tcp\n{row}\n")
    assert str(err.value).startswith(message)


def test_missing_egress_ip_names_the_line():
    with pytest.raises(InputError, match=r"flows.csv:1: egress_ip: no egress IP"):
        replay("0,1,10.244.0.9,10.2.0.0,80,tcp\n", [])


def test_unknown_header_column_is_reported():
    with pytest.raises(InputError, match=r"flows.csv:1: unknown column 'colour'"):
        replay("start,duration,source,destination,port,protocol,colour\n")
