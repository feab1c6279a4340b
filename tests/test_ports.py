"""Sharing a TCP port: only on request (--processes N sets SO_REUSEPORT for its own children); a
server started on a port another server holds must fail, not silently split the traffic."""

from __future__ import annotations

import subprocess

from facedet.v1 import face_detector_pb2 as pb
from facedet_test_support import MODEL, ServerFactory, clean_env, facedet_command, image_bytes


def test_second_server_on_a_taken_port_fails(start_server: ServerFactory) -> None:
    first = start_server(unix=False)
    second = subprocess.run(
        [*facedet_command("serve"), "--model", str(MODEL), "--listen", first.target],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
        env=clean_env(),
    )
    assert second.returncode != 0
    assert f"cannot listen on {first.target}" in second.stderr
    assert "Traceback" not in second.stderr
    with first.stub() as stub:  # the first server is untouched
        assert len(stub.DetectFaces(pb.DetectFacesRequest(encoded=image_bytes("zidane.jpg"))).faces) == 2


def test_processes_share_one_port_and_stop_together(start_server: ServerFactory) -> None:
    server = start_server("--processes", "2", "--decode-threads", "1", "--intra-op-threads", "1", unix=False)
    request = pb.DetectFacesRequest(encoded=image_bytes("zidane.jpg"))
    for _ in range(4):
        with server.stub() as stub:  # a new connection each time: the kernel picks a process
            assert len(stub.DetectFaces(request).faces) == 2
    assert server.stop() == 0
