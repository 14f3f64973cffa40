"""clients.shm.register_with_cuda: the mapped arena page-locked for CUDA, a GPU copy lands in it."""

from __future__ import annotations

import pytest

from kvbucket import Client, Layout
from kvbucket.clients.shm import register_with_cuda, unregister_from_cuda

from daemon import start_daemon

torch = pytest.importorskip("torch")
pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


def test_gpu_copy_into_the_registered_arena_round_trips(tmp_path):
    layout = Layout("uint8", (1 << 20,), tokens_per_chunk=16)
    d = start_daemon(tmp_path / "d", "--unix-socket", str(tmp_path / "kv.sock"), "--shm-size", "16MiB")
    try:
        with Client(d.info["unix_url"], model="m", layout=layout) as c:
            region = c.shm_region()
            assert region is not None and register_with_cuda(region)
            try:
                src = torch.randint(0, 256, (1 << 20,), dtype=torch.uint8, device="cuda")
                host = torch.frombuffer(region, dtype=torch.uint8)[-(1 << 20):]  # pinned: a DMA copy
                host.copy_(src, non_blocking=True)
                torch.cuda.synchronize()
                assert torch.equal(host, src.cpu())
                assert c.put(b"gpu", src)  # and the SDK's put of a CUDA tensor goes through shm
                assert bytes(c.get(b"gpu")) == src.cpu().numpy().tobytes()
            finally:
                del host
                assert unregister_from_cuda(region)
    finally:
        d.stop()


def test_gpu_writes_into_a_reserved_slot_then_commits(tmp_path):
    """The GPU-direct put: reserve arena slots, a CUDA copy (or a gather kernel) writes into them, commit."""
    layout = Layout("uint8", (1 << 20,), tokens_per_chunk=16)
    d = start_daemon(tmp_path / "d", "--unix-socket", str(tmp_path / "kv.sock"), "--shm-size", "16MiB")
    try:
        with Client(d.info["unix_url"], model="m", layout=layout) as c:
            region = c.shm_region()
            assert register_with_cuda(region)
            try:
                src = torch.randint(0, 256, (1 << 20,), dtype=torch.uint8, device="cuda")
                with c.reserve([(b"direct", 1 << 20)]) as r:
                    assert r.in_arena == [True]
                    torch.frombuffer(r.views[0], dtype=torch.uint8).copy_(src, non_blocking=True)
                    torch.cuda.synchronize()
                    assert r.commit() == [True]
                with c.get_views([b"direct"]) as views:
                    assert torch.equal(torch.frombuffer(bytearray(views[0]), dtype=torch.uint8), src.cpu())
            finally:
                assert unregister_from_cuda(region)
    finally:
        d.stop()
