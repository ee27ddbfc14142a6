"""kube/pod_watch.py against a small fake API server (HTTP, in a thread): the list comes in pages, a change of a task's
pod wakes the task and a foreign pod wakes nobody, a bookmark moves the watch's version, 410 Gone lists again and the
index then holds exactly that list, and a foreign pod costs the index a summary, not its body (tracemalloc)."""
from __future__ import annotations

import asyncio
import contextvars
import gc
import json
import queue
import threading
import tracemalloc
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

import kubernetes

from fedtask_operator.kube.pod_watch import PodWatch
from tests.support.waiting import wait_for_async

CLOSE = object()  # queued: the current watch response ends (as the server's timeout ends it)


def foreign(i: int, phase: str = "Running") -> dict:
    env = [{"name": f"SETTING_{k}", "value": "x" * 40} for k in range(12)]
    return {"metadata": {"name": f"web-{i:05d}", "namespace": "apps", "uid": f"u-{i}", "resourceVersion": "5",
                         "labels": {"app": "web"}, "annotations": {"checksum": "a" * 64}},
            "spec": {"nodeName": f"node-{i % 7}", "containers": [
                {"name": "app", "image": "registry.example.com/app:1", "env": env,
                 "resources": {"requests": {"cpu": "250m", "memory": "256Mi"}}}]},
            "status": {"phase": phase}}


def ours(name: str, task: str = "t1", phase: str = "Running", version: str = "7") -> dict:
    return {"metadata": {"name": name, "namespace": "ml", "uid": f"u-{name}", "resourceVersion": version,
                         "labels": {"fedtask.io/task": task, "fedtask.io/stage": "train"},
                         "ownerReferences": [{"apiVersion": "fedtask.io/v1alpha1", "kind": "FederatedTask",
                                              "name": task, "uid": "task-uid", "controller": True}]},
            "spec": {"nodeName": "node-1", "containers": [{"name": "worker", "image": "w",
                                                           "resources": {"requests": {"cpu": "1"}}}]},
            "status": {"phase": phase}}


class FakeApi:
    """GET /api/v1/pods: a paged list (limit/continue) or a watch streaming the queued events; a watch from a
    version below `gone_below` gets a 410 ERROR event, as kube-apiserver sends it."""

    def __init__(self, pods: list[dict]):
        self.pods = {pod["metadata"]["name"]: pod for pod in pods}
        self.version = 100
        self.gone_below = 0
        self.closed = False
        self.requests: list[dict] = []
        self.paths: list[str] = []
        self.cut_once: set[int] = set()  # list pages (by their continue offset) whose first response is cut off
        self.events: queue.Queue = queue.Queue()
        api = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.0"

            def log_message(self, *args):
                pass

            def do_GET(self):
                url = urlparse(self.path)
                query = {key: values[0] for key, values in parse_qs(url.query).items()}
                api.requests.append(query)
                api.paths.append(url.path)
                if query.get("watch") != "true":
                    start = int(query.get("continue") or 0)
                    body = api._page(int(query.get("limit") or 0), start)
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    if start in api.cut_once:  # the connection drops mid-body (IncompleteRead on the client)
                        api.cut_once.discard(start)
                        self.wfile.write(body[: len(body) // 2])
                        return
                    self.wfile.write(body)
                    return
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                api._watch(self.wfile, int(query.get("resourceVersion") or 0))

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def _page(self, limit: int, start: int) -> bytes:
        names = sorted(self.pods)
        stop = start + limit if limit else len(names)
        metadata = {"resourceVersion": str(self.version)}
        if stop < len(names):
            metadata["continue"] = str(stop)
        return json.dumps({"kind": "PodList", "metadata": metadata,
                           "items": [self.pods[name] for name in names[start:stop]]}).encode()

    def _watch(self, out, version: int) -> None:
        if version < self.gone_below:
            out.write(json.dumps({"type": "ERROR", "object": {"kind": "Status", "code": 410,
                                                              "message": "too old resource version"}}).encode() + b"\n")
            return
        while not self.closed:
            try:
                event = self.events.get(timeout=0.2)
            except queue.Empty:
                return
            if event is CLOSE:
                return
            out.write(json.dumps(event).encode() + b"\n")
            out.flush()

    def send(self, type_: str, pod: dict) -> None:
        self.version += 1
        pod["metadata"]["resourceVersion"] = str(self.version)
        if type_ == "DELETED":
            self.pods.pop(pod["metadata"]["name"], None)
        else:
            self.pods[pod["metadata"]["name"]] = pod
        self.events.put({"type": type_, "object": pod})

    def client(self):
        configuration = kubernetes.client.Configuration()
        configuration.host = f"http://127.0.0.1:{self.server.server_address[1]}"
        return kubernetes.client.ApiClient(configuration)

    def close(self) -> None:
        self.closed = True
        self.server.shutdown()
        self.server.server_close()


async def test_paged_list_wakes_tasks_on_their_pods_only_and_relists_after_410_gone():
    pods = [foreign(i) for i in range(1200)] + [foreign(9000, phase="Succeeded")]
    pods += [ours("t1-a"), ours("t1-b"), ours("t2-a", task="t2")]
    api = FakeApi(pods)
    woken: list[tuple[str, str, str]] = []

    async def on_task_pod(type_, namespace, task, body):
        woken.append((type_, namespace, task))
    watch = PodWatch(api.client(), on_task_pod=on_task_pod, page_size=500, server_timeout=5)
    try:
        watch.start()
        await asyncio.wait_for(watch.wait_ready(), 10)
        lists = [r for r in api.requests if r.get("watch") != "true"]
        assert [r.get("limit") for r in lists] == ["500"] * 3  # 1204 pods, 500 at a time
        assert len(watch.summaries) == 1203  # the finished pod holds nothing and is not kept
        assert sorted(watch.task_pods) == [("ml", "t1"), ("ml", "t2")]
        assert sorted(p["metadata"]["name"] for p in watch.task_pods[("ml", "t1")]) == ["t1-a", "t1-b"]
        assert len(list(watch.pods)) == 1203
        assert woken == []  # the first list wakes nobody

        watch.handlers_ready(contextvars.copy_context())
        api.send("ADDED", foreign(5000))
        api.send("MODIFIED", ours("t1-a", phase="Succeeded"))
        await wait_for_async(lambda: woken, timeout=10, interval=0.02)
        assert woken == [("MODIFIED", "ml", "t1")]
        assert [p["status"]["phase"] for p in watch.task_pods[("ml", "t1")] if p["metadata"]["name"] == "t1-a"] \
            == ["Succeeded"]
        assert ("apps", "web-05000") in watch.summaries
        api.send("DELETED", foreign(3))
        api.send("DELETED", ours("t2-a", task="t2", phase="Succeeded"))  # a finished pod: still indexed out
        await wait_for_async(lambda: ("ml", "t2") not in watch.task_pods, timeout=10, interval=0.02)
        assert ("apps", "web-00003") not in watch.summaries
        assert woken[-1] == ("DELETED", "ml", "t2")

        api.events.put({"type": "BOOKMARK", "object": {"kind": "Pod", "metadata": {"resourceVersion": "150"}}})
        api.events.put(CLOSE)  # the server ends the watch: resumed from the bookmark's version
        await wait_for_async(lambda: any(r.get("resourceVersion") == "150" for r in api.requests), timeout=10,
                             interval=0.02)
        assert all(r.get("allowWatchBookmarks") == "true" for r in api.requests if r.get("watch") == "true")

        # the version is gone: the watch lists again; pods that went meanwhile leave the index
        woken.clear()
        for i in range(100, 200):
            del api.pods[f"web-{i:05d}"]
        del api.pods["t1-b"]
        api.pods["t3-a"] = ours("t3-a", task="t3")
        api.version = 300
        api.gone_below = 10**9
        api.events.put(CLOSE)
        await wait_for_async(lambda: watch.lists >= 2, timeout=10, interval=0.02)
        api.gone_below = 0
        assert len(watch.summaries) == 1101  # 1100 foreign and t3-a (t1-a has finished: it holds nothing)
        assert sorted(watch.task_pods) == [("ml", "t1"), ("ml", "t3")]
        assert [p["metadata"]["name"] for p in watch.task_pods[("ml", "t1")]] == ["t1-a"]
        await wait_for_async(lambda: len(woken) >= 2, timeout=10, interval=0.02)
        assert sorted(task for _, _, task in woken) == ["t1", "t3"]
    finally:
        watch.stop(join_seconds=10)
        api.close()


async def test_a_namespaced_watch_summarizes_every_namespace_and_keeps_only_its_namespaces_task_pods():
    """`--namespace ml`: resource accounting still needs every pod's requests, so the watch is cluster-wide (no list
    of every pod per scheduling pass); fedtask's pods of another namespace are summaries only and wake nobody."""
    elsewhere = ours("t9-a", task="t9")
    elsewhere["metadata"]["namespace"] = "team-b"
    api = FakeApi([foreign(i) for i in range(3)] + [ours("t1-a"), elsewhere])
    woken: list[tuple[str, str, str]] = []

    async def on_task_pod(type_, namespace, task, body):
        woken.append((type_, namespace, task))
    watch = PodWatch(api.client(), namespaces=("ml",), on_task_pod=on_task_pod, server_timeout=5)
    try:
        watch.start()
        await asyncio.wait_for(watch.wait_ready(), 10)
        assert set(api.paths) == {"/api/v1/pods"}  # one cluster-wide list and watch
        assert sorted(watch.summaries) == [("apps", "web-00000"), ("apps", "web-00001"), ("apps", "web-00002"),
                                           ("ml", "t1-a"), ("team-b", "t9-a")]
        assert sorted(watch.task_pods) == [("ml", "t1")]

        watch.handlers_ready(contextvars.copy_context())
        changed = ours("t9-a", task="t9", phase="Succeeded")
        changed["metadata"]["namespace"] = "team-b"
        api.send("MODIFIED", changed)  # not our namespace: its summary goes (it finished), it wakes nobody
        api.send("MODIFIED", ours("t1-a", phase="Succeeded"))
        await wait_for_async(lambda: woken, timeout=10, interval=0.02)
        assert woken == [("MODIFIED", "ml", "t1")]
        assert ("team-b", "t9-a") not in watch.summaries and sorted(watch.task_pods) == [("ml", "t1")]
    finally:
        watch.stop(join_seconds=10)
        api.close()


async def test_a_page_cut_off_mid_list_is_asked_again_and_the_list_goes_on_from_there():
    """Under load a page's response can be cut off (80,000 pods on the real API server, benchmarks/scale.py --real):
    the same page is asked for again, with its continue token, instead of the whole list from its first page."""
    api = FakeApi([foreign(i) for i in range(1500)])
    api.cut_once = {1000}  # the third page
    watch = PodWatch(api.client(), page_size=500, server_timeout=5)
    try:
        watch.start()
        await asyncio.wait_for(watch.wait_ready(), 20)
        lists = [r.get("continue") for r in api.requests if r.get("watch") != "true"]
        assert lists == [None, "500", "1000", "1000"], lists  # not [None, "500", "1000", None, "500", "1000"]
        assert len(watch.summaries) == 1500 and watch.lists == 1
    finally:
        watch.stop(join_seconds=10)
        api.close()


async def test_a_foreign_pod_costs_the_index_its_summary_not_its_body():
    """The old index (kopf's) kept per-object state and bodies: ~7 KB and more per pod. Here <= 1 KB, and no part
    of a foreign pod's body (its env values) survives the list."""
    warm = FakeApi([foreign(i) for i in range(10)])  # the client's and the watch's imports, outside the measure
    warmed = PodWatch(warm.client(), page_size=5).start()
    await asyncio.wait_for(warmed.wait_ready(), 10)
    warmed.stop(join_seconds=10)
    warm.close()
    count = 2000
    api = FakeApi([foreign(i) for i in range(count)])
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        watch = PodWatch(api.client(), page_size=500).start()
        await asyncio.wait_for(watch.wait_ready(), 30)
        for _ in range(3):
            gc.collect()
        per_pod = (tracemalloc.get_traced_memory()[0] - before) / count
    finally:
        tracemalloc.stop()
        watch.stop(join_seconds=10)
        api.close()
    assert len(watch.summaries) == count
    assert per_pod <= 1024, f"{per_pod:.0f} bytes per foreign pod"
    marker = "x" * 40
    assert not any(isinstance(obj, dict) and obj.get("value") == marker for obj in gc.get_objects())
