"""The real control-plane archive (``shared/k8s/k8s-local.tar.xz``) through qscale.dev.fetch,
served on loopback under its pinned sha256: it unpacks into the shape ``install.sh`` makes and
is found afterwards with the server gone; a copy with a few bytes flipped is refused."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from loopback_http import serve
from qscale.dev import cluster
from qscale.dev import fetch as f

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def shared_k8s() -> Path:
    script = next(cluster._install_scripts(), None)
    if script is None or not (script.parent / "k8s-local.tar.xz").is_file():
        pytest.skip("no shared/k8s/k8s-local.tar.xz next to this checkout")
    return script.parent


def _env(tmp_path: Path) -> dict[str, str]:
    (tmp_path / "empty-path").mkdir(exist_ok=True)
    return {
        "HOME": str(tmp_path / "home"),
        "PATH": str(tmp_path / "empty-path"),
        "QSCALE_CACHE_DIR": str(tmp_path / "cache"),
        "QSCALE_K8S_HOME": str(tmp_path / "k8s"),
    }


def _tree(root: Path) -> dict[str, int]:
    """Every path under ``root`` with its permission bits."""
    return {str(p.relative_to(root)): p.stat().st_mode & 0o777 for p in sorted(root.rglob("*"))}


def test_the_fetched_archive_unpacks_as_install_sh_does_and_is_found_offline(
    shared_k8s, tmp_path, monkeypatch
):
    env = _env(tmp_path)
    with serve(shared_k8s) as srv:
        got = f.fetch_k8s_bin(env, base_url=srv.url)
    dest = tmp_path / "k8s"
    assert got == dest / "bin" and cluster._has_all(got)
    assert (dest / ".sha256").read_text().strip() == f.K8S_LOCAL.sha256
    assert (dest / "kwok-config" / "metrics-server").is_dir()
    # The same tree, modes and kwokctl-local.yaml as shared/k8s/install.sh makes.
    by_script = tmp_path / "by-install-sh"
    out = subprocess.run(
        ["bash", str(shared_k8s / "install.sh"), str(by_script)],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    assert out.stdout.strip().splitlines()[-1] == f"{by_script}/bin"
    assert _tree(dest) == _tree(by_script)
    yaml = "kwok-config/kwokctl-local.yaml"
    assert (dest / yaml).read_text() == (by_script / yaml).read_text().replace(
        str(by_script), str(dest)
    )
    shutil.rmtree(by_script)
    # The server is gone and no download is asked for: find_k8s_bin finds the unpacked copy.
    monkeypatch.setattr(cluster, "_install_scripts", lambda: iter(()))
    assert cluster.find_k8s_bin(env) == got.resolve()
    assert f.fetch_k8s_bin({**env, f.NO_FETCH_ENV: "1"}) == got
    # The downloaded archive stays in the cache, verified; nothing else is left there.
    assert sorted(os.listdir(tmp_path / "cache" / "downloads")) == ["k8s-local.tar.xz"]


def test_a_tampered_copy_of_the_archive_is_refused_and_nothing_is_unpacked(
    shared_k8s, tmp_path, monkeypatch
):
    monkeypatch.setattr(cluster, "_install_scripts", lambda: iter(()))
    served = tmp_path / "served"
    served.mkdir()
    bad = served / "k8s-local.tar.xz"
    shutil.copyfile(shared_k8s / "k8s-local.tar.xz", bad)
    with bad.open("r+b") as fh:
        for at in (4096, bad.stat().st_size // 2):
            fh.seek(at)
            b = fh.read(1)
            fh.seek(at)
            fh.write(bytes([b[0] ^ 0xFF]))
    env = _env(tmp_path)
    with serve(served) as srv, pytest.raises(f.ChecksumMismatch) as e:
        cluster.find_k8s_bin(env | {f.BASE_URL_ENV: srv.url}, fetch=True)
    assert e.value.expected == f.K8S_LOCAL.sha256 and e.value.actual != e.value.expected
    assert f"expected {f.K8S_LOCAL.sha256}, got {e.value.actual}" in str(e.value)
    assert os.listdir(tmp_path / "cache" / "downloads") == []
    assert not (tmp_path / "k8s").exists()
