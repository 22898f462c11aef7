"""No message of a first request is lost: clients of handed-out kernels are ready in one round
trip (``hotpot_km.handout``) and still see everything a cold kernel would give them.

Many handouts in a row, each with a client that executes as soon as it is ready, as
nbclient and Voila do; every IOPub message of that first execution is checked.
"""

from __future__ import annotations

import asyncio
import os
import re
import uuid

import pytest
import requests
from conftest import kernel_children, marked_kernels
from jupyter_client.asynchronous.client import AsyncKernelClient
from servers import free_port, running, voila_command, wait_for
from servers import write_notebook as notebook
from test_voila_pages import tracebacks

from hotpot_km import PooledKernelManager
from hotpot_km.handout import ready_client_class

pytestmark = pytest.mark.usefixtures("no_leftover_kernels")

CODE = (
    "from IPython.display import HTML, display\n"
    "print('stdout {token}')\n"
    "display(HTML('<b>display {token}</b>'))\n"
    "'result {token}'"
)
#: Every IOPub message of the first execution, in order.
EXPECTED = ["status", "execute_input", "stream", "display_data", "execute_result", "status"]


async def first_execution(client: AsyncKernelClient, token: str) -> list[dict]:
    """Execute right after readiness; every IOPub message until this request's idle."""
    msg_id = client.execute(CODE.format(token=token))
    seen = []
    while True:
        msg = await client.get_iopub_msg(timeout=60)
        seen.append(msg)
        if (
            msg["msg_type"] == "status"
            and msg["parent_header"].get("msg_id") == msg_id
            and msg["content"]["execution_state"] == "idle"
        ):
            break
    reply = await client._async_recv_reply(msg_id, timeout=60)
    assert reply["content"]["status"] == "ok", reply["content"]
    # ipykernel welcomes the first subscriber of a topic (JEP 65) whenever it gets to it;
    # that message has no parent. Anything else must belong to this request.
    seen = [m for m in seen if m["msg_type"] != "iopub_welcome"]
    assert all(m["parent_header"].get("msg_id") == msg_id for m in seen), [
        (m["msg_type"], m["parent_header"].get("msg_type")) for m in seen
    ]
    return seen


@pytest.mark.slow
async def test_200_handouts_each_first_execute_gets_every_message(jupyter_dirs):
    pool, total = 8, 200
    km = PooledKernelManager(kernel_pools={"python3": pool}, fill_delay=0, max_warming=2)
    done = 0
    try:
        while done < total:
            await km.wait_for_pool()
            pooled = {p.pid for p in kernel_children()}
            batch = []
            for _ in range(min(pool, total - done)):
                token = uuid.uuid4().hex
                kid = await km.start_kernel(
                    cwd=str(jupyter_dirs["data"]), env=dict(os.environ, TOKEN=token)
                )
                batch.append(kid)
                client = km.get_kernel(kid).client()
                assert type(client) is ready_client_class(AsyncKernelClient)
                client.start_channels()
                try:
                    await client.wait_for_ready(timeout=60)
                    seen = await first_execution(client, token)
                finally:
                    client.stop_channels()
                assert [m["msg_type"] for m in seen] == EXPECTED, [
                    (m["msg_type"], m["content"]) for m in seen
                ]
                busy, code, out, shown, result, idle = (m["content"] for m in seen)
                assert busy["execution_state"] == "busy" and idle["execution_state"] == "idle"
                assert code["code"] == CODE.format(token=token)
                assert out == {"name": "stdout", "text": f"stdout {token}\n"}
                assert shown["data"]["text/html"] == f"<b>display {token}</b>"
                assert result["data"]["text/plain"] == f"'result {token}'"
                assert result["execution_count"] == 1
                done += 1
            assert {p.pid for p in kernel_children()} >= pooled  # all of them were handouts
            await asyncio.gather(*(km.shutdown_kernel(k, now=True) for k in batch))
    finally:
        await km.shutdown_all()
    assert done == total


VOILA_JSON = """{
  "VoilaConfiguration": {"multi_kernel_manager_class": "hotpot_km.mapping.PooledMappingKernelManager"},
  "PooledKernelManager": {"kernel_pools": {"python3": 3}, "_wait_at_startup": true}
}
"""


@pytest.mark.slow
def test_50_voila_pages_in_a_row_each_with_its_full_output(jupyter_dirs, tmp_path):
    app = tmp_path / "app"
    app.mkdir()
    (app / "voila.json").write_text(VOILA_JSON)
    # only pooled kernels know POOLED: a page served by a cold kernel would fail
    (jupyter_dirs["config"] / "kernel_pool_init_python3.py").write_text("POOLED = 'pooled'\n")
    notebook(
        app / "dashboard.ipynb",
        "import os\nprint('first cell', POOLED, os.environ['VOILA_REQUEST_URL'])",
        "from IPython.display import HTML, display\ndisplay(HTML('<b>shown</b>'))",
        "'last' + ' cell'",
    )
    port = free_port()
    with running(voila_command("dashboard.ipynb", port), cwd=app, port=port,
                 ready_path="/voila/files/voila.json", log=tmp_path / "voila.log") as server:
        http = requests.Session()
        for page in range(50):
            # a kernel for this page is in the pool (maybe still warming): a handout, not
            # cold. Pages come back to back, faster than fill_delay: the refills keep up
            # without waiting for the last page's own (at most one process of the two is
            # the closed page's, still exiting)
            wait_for(lambda: len(server.kernel_pids()) >= 2, timeout=120, what="the refill")
            response = http.get(f"{server.url}/?page={page}", timeout=120)
            assert response.status_code == 200, server.log()[-3000:]
            text = response.text.replace("\\u003c", "<").replace("\\u003e", ">")  # JSON-escaped
            assert re.search(rf"first cell pooled \S+page={page}\b", text), (page, text[-3000:])
            assert "<b>shown</b>" in text, page
            assert "last cell" in text, page
            kernel_id = re.search(r'"kernelId"\s*:\s*"([0-9a-f-]{36})"', text).group(1)
            xsrf = uuid.uuid4().hex  # as the page's unload handler does
            closed = http.post(f"{server.url}/voila/api/shutdown/{kernel_id}", timeout=60,
                               headers={"X-XSRFToken": xsrf, "Cookie": f"_xsrf={xsrf}"})
            assert closed.status_code == 204, closed.status_code
        # the server's own tracebacks; a pooled kernel that could not start writes its own to
        # the same stream (another process's kernel took a port between jupyter_client's
        # pick and the kernel's bind), and the pool warms another instead
        assert not tracebacks(server.log()), server.log()[-3000:]
    assert not marked_kernels()
