"""Websocket frames: merged per stream on the server, numbered, encoded once."""

import asyncio
import json

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer

from jobs.broadcast import Broadcaster, Cards, Outbox, card, coalesce


def test_latest_node_health_and_job_progress_win_and_the_rest_is_kept():
    events = [
        {"type": "node.health", "node": "w1", "cpu": 10, "changed": True},
        {"type": "job.progress", "job": "7", "progress": 0.1},
        {"type": "job.log", "job": "7", "seq": 1, "text": "a"},
        {"type": "node.health", "node": "w2", "cpu": 50, "changed": False},
        {"type": "job.state", "job": "7", "state": "succeeded"},
        {"type": "job.progress", "job": "7", "progress": 1.0},
        {"type": "node.health", "node": "w1", "cpu": 30, "changed": False},
        {"type": "job.log", "job": "7", "seq": 2, "text": "b"},
    ]
    merged = coalesce(events)
    assert merged == [
        {"type": "job.log", "job": "7", "seq": 1, "text": "a"},
        {"type": "node.health", "node": "w2", "cpu": 50, "changed": False},
        {"type": "job.state", "job": "7", "state": "succeeded"},
        {"type": "job.progress", "job": "7", "progress": 1.0},
        # w1's state change earlier in the window is not lost by folding
        {"type": "node.health", "node": "w1", "cpu": 30, "changed": True},
        {"type": "job.log", "job": "7", "seq": 2, "text": "b"},
    ]
    distinct = [{"type": "job.log", "seq": 1}, {"type": "node.health", "node": "w1"}]
    assert coalesce(distinct) == distinct


def test_a_burst_leaves_as_one_frame_after_the_first_with_the_next_seq(redis_client):
    async def run():
        layer = get_channel_layer()
        channel = await layer.new_channel()
        await layer.group_add("burst", channel)
        broadcaster = Broadcaster(interval=0.4)
        broadcaster.publish({"burst": [{"type": "node.health", "node": "w1", "cpu": 0}]})
        first = await asyncio.wait_for(layer.receive(channel), 5)
        for i in range(1, 21):
            broadcaster.publish({"burst": [{"type": "node.health", "node": "w1", "cpu": i},
                                           {"type": "job.log", "job": "1", "seq": i}]})
        second = await asyncio.wait_for(layer.receive(channel), 5)
        try:
            extra = await asyncio.wait_for(layer.receive(channel), 1.0)
        except TimeoutError:
            extra = None
        await layer.group_discard("burst", channel)
        return first, second, extra

    first, second, extra = async_to_sync(run)()
    assert first["type"] == "portal.frame" and second["type"] == "portal.frame"
    one, two = json.loads(first["text"]), json.loads(second["text"])
    assert one == {"type": "batch", "stream": "burst", "seq": 1,
                   "events": [{"type": "node.health", "node": "w1", "cpu": 0}]}
    assert two["seq"] == 2
    assert [e["seq"] for e in two["events"] if e["type"] == "job.log"] == list(range(1, 21))
    assert [e["cpu"] for e in two["events"] if e["type"] == "node.health"] == [20]
    assert extra is None  # twenty publishes, two frames


def test_a_node_changing_state_is_sent_at_once_with_what_waited(redis_client):
    async def run():
        layer = get_channel_layer()
        channel = await layer.new_channel()
        await layer.group_add("urgent", channel)
        broadcaster = Broadcaster(interval=30, cluster_interval=30)
        broadcaster.publish({"urgent": [{"type": "node.health", "node": "w1", "cpu": 1}]})
        await asyncio.wait_for(layer.receive(channel), 5)
        broadcaster.publish({"urgent": [{"type": "node.health", "node": "w2", "cpu": 2}]})
        broadcaster.publish({"urgent": [{"type": "node.health", "node": "w1",
                                         "state": "offline", "changed": True}]})
        # Well within the 30 s window: the change does not wait for it.
        frame = await asyncio.wait_for(layer.receive(channel), 5)
        await layer.group_discard("urgent", channel)
        return json.loads(frame["text"])

    frame = async_to_sync(run)()
    assert frame["seq"] == 2
    assert [(e["node"], e.get("changed", False)) for e in frame["events"]] == [
        ("w2", False), ("w1", True)]


def test_frames_go_to_the_channel_the_layer_listens_on():
    from jobs.broadcast import group_channel

    async def layer_name():
        return get_channel_layer()._get_layer()._get_group_channel_name("cluster")

    assert group_channel("cluster") == async_to_sync(layer_name)()


def test_a_frame_is_plain_json_with_its_seq(redis_client):
    async def run():
        layer = get_channel_layer()
        channel = await layer.new_channel()
        await layer.group_add("plain", channel)
        for _ in range(12):  # seq runs to two digits in the fixed-width mark
            redis_client.incr("portal:seq:plain")
        Broadcaster(interval=0).publish({"plain": [{"type": "job.log", "text": "@" * 20}]})
        message = await asyncio.wait_for(layer.receive(channel), 5)
        await layer.group_discard("plain", channel)
        return message

    message = async_to_sync(run)()
    assert message["stream"] == "plain"
    assert json.loads(message["text"]) == {"type": "batch", "stream": "plain", "seq": 13,
                                           "events": [{"type": "job.log", "text": "@" * 20}]}


def test_an_urgent_frame_leaves_no_second_timer_behind(redis_client):
    async def run():
        layer = get_channel_layer()
        channel = await layer.new_channel()
        await layer.group_add("steady", channel)
        broadcaster = Broadcaster(interval=0.5, cluster_interval=0.5)
        frames = []

        async def receive():  # never cancelled midway: the layer forgets a cancelled channel
            while True:
                frames.append(await layer.receive(channel))

        receiving = asyncio.ensure_future(receive())
        broadcaster.publish({"steady": [{"type": "node.health", "node": "w1"}]})
        await asyncio.sleep(0.1)
        for i in range(5):  # a waiting frame, then changes that go out at once
            broadcaster.publish({"steady": [{"type": "node.health", "node": "w2", "cpu": i}]})
            broadcaster.publish({"steady": [{"type": "node.health", "node": f"n{i}",
                                             "changed": True}]})
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.1)
        urgent = len(frames)
        for i in range(30):  # then a steady flow: one frame per window
            broadcaster.publish({"steady": [{"type": "node.health", "node": "w3", "cpu": i}]})
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.6)
        steady = len(frames) - urgent
        receiving.cancel()
        return urgent, steady

    urgent, steady = async_to_sync(run)()
    assert urgent == 6  # the first frame and five changes
    assert steady <= 5  # 1.5 s of steady updates in 0.5 s windows, not one frame each


def test_the_first_event_after_a_quiet_spell_goes_out_without_waiting_the_window(redis_client):
    async def run():
        layer = get_channel_layer()
        channel = await layer.new_channel()
        await layer.group_add("quiet", channel)
        broadcaster = Broadcaster(interval=30)
        # Its last frame went long ago: the next one is not held for the 30 s window ...
        broadcaster.last_sent["quiet"] = broadcaster.loop.time() - 100
        broadcaster.publish({"quiet": [{"type": "job.log", "job": "1", "seq": 1}]})
        first = await asyncio.wait_for(layer.receive(channel), 5)
        # ... and what follows within the window waits for it, merged.
        broadcaster.publish({"quiet": [{"type": "job.log", "job": "1", "seq": 2}]})
        broadcaster.publish({"quiet": [{"type": "job.log", "job": "1", "seq": 3}]})
        try:
            early = await asyncio.wait_for(layer.receive(channel), 1.0)
        except TimeoutError:
            early = None
        waiting = list(broadcaster.pending.get("quiet", ()))
        await layer.group_discard("quiet", channel)
        return json.loads(first["text"]), early, waiting

    first, early, waiting = async_to_sync(run)()
    assert [e["seq"] for e in first["events"]] == [1]
    assert early is None
    assert [e["seq"] for e in waiting] == [2, 3]


def health(node="w1", cpu=40.0, mem=50.0, **fields):
    util = {"cpu": cpu, "mem": mem, "cpu_cores": [cpu] * 4, "disk": 12.0, "net_rx_bps": 5e6,
            "gpus": [{"index": 0, "util": 70.0, "mem_used": 2**30}]}
    return {"type": "node.health", "node": node, "state": "online", "running": 1,
            "concurrency": 4, "utilization": util, "changed": False,
            "last_heartbeat": "2026-01-01T00:00:00+00:00", **fields}


def test_a_nodes_card_is_sent_again_only_when_it_moved_past_the_threshold():
    cards = Cards(delta=3.0, refresh=60.0)
    sent = [cards.moved(card(event), now) for now, event in [
        (0.0, health()),                                # the first: the card has nothing yet
        (1.0, health(cpu=41.5, mem=51.0)),              # moved less than 3 points: not resent
        (2.0, health(cpu=42.9)),                        # 2.9 from what the card shows: not yet
        (3.0, health(cpu=43.0)),                        # 3 points: sent
        (4.0, health(cpu=43.0, running=2)),             # another job on it: sent
        (5.0, health(cpu=43.0, running=2, state="draining")),
        (6.0, health(cpu=43.0, running=2, state="draining", changed=True)),  # always
        (7.0, health(node="w2")),                       # another node: its own card
        (70.0, health(node="w2")),                      # unchanged, but a minute on: refreshed
    ]]
    assert sent == [True, False, False, True, True, True, True, True, True]
    gpu = Cards(delta=3.0, refresh=60.0)
    assert gpu.moved(health(), 0.0)
    moved_gpu = health()
    moved_gpu["utilization"]["gpus"][0]["util"] = 90.0
    assert gpu.moved(card(moved_gpu), 1.0)


def test_the_cluster_stream_gets_a_nodes_card_and_its_own_stream_the_whole_health():
    outbox = Outbox()
    outbox.node(health())
    whole, = outbox.groups["node-w1"]
    shown, = outbox.groups["cluster"]
    assert whole["utilization"]["cpu_cores"] == [40.0] * 4
    assert shown["utilization"] == {"cpu": 40.0, "mem": 50.0, "gpus": [{"util": 70.0}]}
    assert {k: v for k, v in shown.items() if k != "utilization"} == \
        {k: v for k, v in whole.items() if k != "utilization"}


def test_unchanged_node_health_never_reaches_the_dashboards_but_its_page_gets_each(redis_client):
    async def run():
        layer = get_channel_layer()
        cluster, page = await layer.new_channel(), await layer.new_channel()
        await layer.group_add("cluster", cluster)
        await layer.group_add("node-w1", page)
        broadcaster = Broadcaster(interval=0, cluster_interval=0,
                                  cards=Cards(delta=3.0, refresh=60.0))
        frames = {"cluster": [], "page": []}
        for cpu in (40.0, 40.5, 41.0, 39.8, 45.0):
            outbox = Outbox()
            outbox.node(health(cpu=cpu))
            broadcaster.publish(dict(outbox.groups))
            frames["page"].append(json.loads((await asyncio.wait_for(
                layer.receive(page), 5))["text"]))
        await asyncio.sleep(0.2)  # whatever the dashboards were sent has arrived by now
        while True:
            try:
                message = await asyncio.wait_for(layer.receive(cluster), 0.5)
            except TimeoutError:
                break
            frames["cluster"].append(json.loads(message["text"]))
        await layer.group_discard("cluster", cluster)
        await layer.group_discard("node-w1", page)
        return frames

    frames = async_to_sync(run)()
    assert [f["events"][0]["utilization"]["cpu"] for f in frames["page"]] == \
        [40.0, 40.5, 41.0, 39.8, 45.0]
    assert [e["utilization"]["cpu"] for f in frames["cluster"] for e in f["events"]] == \
        [40.0, 45.0]
    assert "cpu_cores" not in frames["cluster"][0]["events"][0]["utilization"]
