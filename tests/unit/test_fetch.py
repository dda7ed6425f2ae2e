"""qscale.dev.fetch against a file server on loopback: verified downloads, the cache reused
without the network, a checksum mismatch that stops everything, refused URLs and redirects, and
``qscale demo``'s offline line when the server is down. No test here reaches the internet.

The artifacts served here are small tarballs the tests build themselves, with their own
sha256s (the pins are replaced with ``monkeypatch``); the real pins are only checked for form.
The real control-plane archive is fetched in ``tests/integration/test_fetch_k8s_archive.py``.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest

from loopback_http import dead_url, serve
from qscale.dev import fetch as f


def _tarball(path: Path, files: dict[str, bytes], top: str = "tool-1.0.linux-amd64") -> str:
    """A tar.gz of executables under ``top/``; returns its sha256."""
    with tarfile.open(path, "w:gz", compresslevel=1) as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(f"{top}/{name}")
            info.size, info.mode = len(data), 0o755
            tar.addfile(info, io.BytesIO(data))
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _artifact(served: Path, files: dict[str, bytes], name: str = "tool.tar.gz") -> f.Artifact:
    sha = _tarball(served / name, files)
    return f.Artifact(
        url=f"https://example.invalid/releases/{name}",
        sha256=sha,
        max_bytes=1 << 20,
        members=tuple(files),
    )


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """An environment with its own cache and k8s home, no PATH, downloads allowed."""
    (tmp_path / "empty-path").mkdir(exist_ok=True)
    return {
        "HOME": str(tmp_path / "home"),
        "PATH": str(tmp_path / "empty-path"),
        "QSCALE_CACHE_DIR": str(tmp_path / "cache"),
        "QSCALE_K8S_HOME": str(tmp_path / "k8s"),
        **extra,
    }


def _leftovers(env: dict[str, str]) -> list[str]:
    d = Path(env["QSCALE_CACHE_DIR"]) / "downloads"
    return sorted(p.name for p in d.iterdir()) if d.is_dir() else []


@pytest.mark.parametrize("artifact", [f.K8S_LOCAL, f.PROMETHEUS], ids=["k8s-local", "prometheus"])
def test_the_pinned_manifest_is_well_formed(artifact):
    assert re.fullmatch(r"[0-9a-f]{64}", artifact.sha256)
    assert artifact.url.startswith("https://github.com/")
    assert artifact.url.endswith(("/k8s-local.tar.xz", ".linux-amd64.tar.gz"))
    assert 0 < artifact.max_bytes <= 1 << 30


def test_the_control_plane_pin_is_shared_k8s_sha256sums():
    from qscale.dev.cluster import _install_scripts

    script = next(_install_scripts(), None)
    if script is None:
        pytest.skip("no shared/k8s next to this checkout")
    sums = (script.parent / "SHA256SUMS").read_text().split()
    assert sums == [f.K8S_LOCAL.sha256, "k8s-local.tar.xz"]


def test_a_download_is_verified_cached_and_reused_without_the_network(tmp_path):
    served = tmp_path / "served"
    served.mkdir()
    art = _artifact(served, {"prometheus": b"#!/bin/sh\necho hi\n"})
    env = _env(tmp_path)
    said: list[str] = []
    with serve(served) as srv:
        got = f.fetch(art, env, base_url=srv.url, say=said.append)
    assert got == tmp_path / "cache" / "downloads" / "tool.tar.gz"
    assert hashlib.sha256(got.read_bytes()).hexdigest() == art.sha256
    assert _leftovers(env) == ["tool.tar.gz"]  # no temporary file left
    assert len(said) == 1 and "downloading tool.tar.gz" in said[0]
    # The server is gone: the cached, verified copy is used as is.
    assert f.fetch(art, env, base_url=dead_url()) == got
    # Downloads forbidden: still the cached copy.
    assert f.fetch(art, {**env, f.NO_FETCH_ENV: "1"}, base_url=dead_url()) == got


def test_a_cached_copy_that_no_longer_matches_is_downloaded_again(tmp_path):
    served = tmp_path / "served"
    served.mkdir()
    art = _artifact(served, {"prometheus": b"#!/bin/sh\n"})
    env = _env(tmp_path)
    stale = tmp_path / "cache" / "downloads" / "tool.tar.gz"
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"an older version")
    with serve(served) as srv:
        assert f.fetch(art, env, base_url=srv.url) == stale
    assert hashlib.sha256(stale.read_bytes()).hexdigest() == art.sha256


def test_a_checksum_mismatch_stops_deletes_the_file_and_unpacks_nothing(tmp_path, monkeypatch):
    served = tmp_path / "served"
    served.mkdir()
    art = _artifact(served, {"prometheus": b"#!/bin/sh\necho genuine\n", "promtool": b"x"})
    data = bytearray((served / art.filename).read_bytes())
    for i in (10, len(data) // 2, len(data) - 10):
        data[i] ^= 0xFF  # a few bytes flipped in transit, or a tampered mirror
    (served / art.filename).write_bytes(bytes(data))
    actual = hashlib.sha256(bytes(data)).hexdigest()
    monkeypatch.setattr(f, "PROMETHEUS", art)
    env = _env(tmp_path)
    with serve(served) as srv, pytest.raises(f.ChecksumMismatch) as e:
        f.fetch_prometheus(env, base_url=srv.url)
    msg = str(e.value)
    assert "tool.tar.gz" in msg and art.sha256 in msg and actual in msg
    assert (e.value.expected, e.value.actual) == (art.sha256, actual)
    assert _leftovers(env) == []  # the bad file is deleted
    assert not (tmp_path / "cache" / "prometheus").exists()  # nothing unpacked
    assert f.cached_prometheus(env) is None


def test_a_server_that_is_down_or_lacks_the_file_is_unavailable(tmp_path):
    served = tmp_path / "served"
    served.mkdir()
    art = _artifact(served, {"prometheus": b"x"})
    env = _env(tmp_path)
    with pytest.raises(f.FetchUnavailable, match="ConnectError"):
        f.fetch(art, env, base_url=dead_url())
    (tmp_path / "nothing").mkdir()
    with serve(tmp_path / "nothing") as srv, pytest.raises(f.FetchUnavailable, match="HTTP 404"):
        f.fetch(art, env, base_url=srv.url)
    with pytest.raises(f.FetchUnavailable, match=f"{f.NO_FETCH_ENV}=1"):
        f.fetch(art, {**env, f.NO_FETCH_ENV: "1"}, base_url=dead_url())
    assert _leftovers(env) == []


def test_only_https_is_fetched_and_a_redirect_off_it_is_refused(tmp_path):
    served = tmp_path / "served"
    served.mkdir()
    art = _artifact(served, {"prometheus": b"x"})
    env = _env(tmp_path)
    for base in ("http://example.com/mirror", "ftp://127.0.0.1/x", "file:///tmp"):
        with pytest.raises(f.FetchError, match="only https"):
            f.fetch(art, env, base_url=base)
    with pytest.raises(f.FetchError, match="only https"):
        f.fetch(f.Artifact("http://example.com/t.tar.gz", art.sha256, 1 << 20), env)
    redirects = {
        "/down/tool.tar.gz": "http://example.invalid/tool.tar.gz",  # plain http, off loopback
        "/moved/tool.tar.gz": "/tool.tar.gz",  # same loopback server: followed
    }
    with serve(served, redirects) as srv:
        with pytest.raises(
            f.FetchError, match=r"refusing a redirect .* to http://example\.invalid"
        ):
            f.fetch(art, env, base_url=f"{srv.url}/down")
        assert _leftovers(env) == []
        assert f.fetch(art, env, base_url=f"{srv.url}/moved").is_file()


def test_a_download_over_its_size_cap_is_refused(tmp_path):
    served = tmp_path / "served"
    served.mkdir()
    art = _artifact(served, {"prometheus": os.urandom(4096)})
    small = f.Artifact(art.url, art.sha256, max_bytes=1000)
    env = _env(tmp_path)
    with serve(served) as srv, pytest.raises(f.FetchError, match="cap"):
        f.fetch(small, env, base_url=srv.url)
    assert _leftovers(env) == []


def test_an_archive_without_the_binary_leaves_nothing_unpacked(tmp_path, monkeypatch):
    served = tmp_path / "served"
    served.mkdir()
    sha = _tarball(served / "p.tar.gz", {"README": b"no binary here"})
    monkeypatch.setattr(
        f,
        "PROMETHEUS",
        f.Artifact("https://example.invalid/p.tar.gz", sha, 1 << 20, ("prometheus",)),
    )
    env = _env(tmp_path)
    with serve(served) as srv, pytest.raises(f.FetchError, match=r"p\.tar\.gz lacks prometheus"):
        f.fetch_prometheus(env, base_url=srv.url)
    assert os.listdir(tmp_path / "cache") == ["downloads"]  # no half-unpacked directory


def test_prometheus_is_fetched_unpacked_and_found_from_the_cache(tmp_path, monkeypatch):
    """The Prometheus path end to end with a tarball built here from the machine's own
    ``prometheus`` binary: its sha256 is this test's own, not the pinned release's."""
    from qscale.dev.prom import PrometheusUnavailable, find_prometheus

    real = shutil.which("prometheus")
    if real is None:
        pytest.skip("no prometheus binary to build the served tarball from")
    served = tmp_path / "served"
    served.mkdir()
    art = _artifact(
        served,
        {"prometheus": Path(real).read_bytes(), "promtool": b"#!/bin/sh\n"},
        name="prometheus-9.9.9.linux-amd64.tar.gz",
    )
    monkeypatch.setattr(f, "PROMETHEUS", f.Artifact(art.url, art.sha256, 256 << 20, art.members))
    env = _env(tmp_path)
    with pytest.raises(PrometheusUnavailable, match="could not download the pinned Prometheus"):
        find_prometheus({**env, f.BASE_URL_ENV: dead_url()}, fetch=True)
    with pytest.raises(PrometheusUnavailable, match="no prometheus binary"):
        find_prometheus(env)  # not asked to download
    with serve(served) as srv:
        got = find_prometheus({**env, f.BASE_URL_ENV: srv.url}, fetch=True)
    assert got == tmp_path / "cache" / "prometheus" / "prometheus"
    assert os.access(got, os.X_OK) and (got.parent / "promtool").is_file()
    out = subprocess.run([str(got), "--version"], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0 and "prometheus, version" in out.stdout + out.stderr
    # Server gone, downloads not even asked for: the cache answers.
    assert find_prometheus(env) == got
    assert f.cached_prometheus(env) == got


def _demo_env(tmp_path: Path, monkeypatch, base_url: str) -> None:
    """``qscale demo`` on a machine with nothing: no binaries, no checkout's shared/k8s."""
    import qscale.dev.cluster as cluster

    for k, v in _env(tmp_path, **{f.BASE_URL_ENV: base_url}).items():
        monkeypatch.setenv(k, v)
    for k in (f.NO_FETCH_ENV, "QSCALE_K8S_BIN", "QSCALE_PROMETHEUS_BIN"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setattr(cluster, "_install_scripts", lambda: iter(()))


def test_the_demo_offline_says_so_in_one_line(tmp_path, monkeypatch, capsys):
    import qscale.cli
    from qscale.demo.cli import OFFLINE_ARGS, demo_main

    _demo_env(tmp_path, monkeypatch, dead_url())
    ran = []
    monkeypatch.setattr(qscale.cli, "main", lambda args: ran.append(args) or 0)
    assert demo_main(["--out", str(tmp_path / "o")]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1, out
    assert out[0].startswith(
        "qscale demo: no local control plane here (could not download the pinned control plane: "
    )
    assert "ConnectError" in out[0] and "running the offline demo instead" in out[0]
    assert ran == [[*OFFLINE_ARGS, "--out", str(tmp_path / "o")]]
    assert demo_main(["--no-fallback"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "could not download the pinned control plane" in err[0]
    # --no-fetch: the line says how to get the binaries, no download was tried.
    assert demo_main(["--no-fetch", "--out", str(tmp_path / "o")]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1 and "no local Kubernetes control plane binaries" in out[0]


def test_the_demo_stops_on_a_checksum_mismatch(tmp_path, monkeypatch, capsys):
    import qscale.cli
    from qscale.demo.cli import demo_main

    served = tmp_path / "served"
    served.mkdir()
    (served / "k8s-local.tar.xz").write_bytes(b"\xfd7zXZ\x00 not the pinned archive")
    ran = []
    monkeypatch.setattr(qscale.cli, "main", lambda args: ran.append(args) or 0)
    with serve(served) as srv:
        _demo_env(tmp_path, monkeypatch, srv.url)
        assert demo_main(["--out", str(tmp_path / "o")]) == 1
    cap = capsys.readouterr()
    err = cap.err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("qscale demo: error: k8s-local.tar.xz from ")
    assert f"expected {f.K8S_LOCAL.sha256}" in err[0] and "sha256 mismatch" in err[0]
    assert ran == []  # no quiet fallback to the offline demo
    assert "downloading k8s-local.tar.xz" in cap.out
    assert _leftovers(_env(tmp_path)) == [] and not (tmp_path / "k8s").exists()
