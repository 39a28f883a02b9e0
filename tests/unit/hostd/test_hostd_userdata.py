"""A host's user data: a #cloud-config that round-trips, fits AWS's 16 KiB, keeps file
modes, and is never logged; the credentials and config files it carries."""

from __future__ import annotations

import base64
import dataclasses
import json
import os
from pathlib import Path

import pytest
import structlog
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from byoc_agent.hostd.config import check_private, load_credentials, parse_config
from byoc_agent.hostd.credentials import HostCredentials, new_host_credentials
from byoc_agent.hostd.userdata import (
    CONFIG_FILE,
    KEY_FILE,
    MAX_USER_DATA,
    SECRET_FILE,
    HostdBootConfig,
    parse_user_data,
    render_user_data,
)
from byoc_agent.protocol.errors import CorralError, InvalidArgumentError


def boot(**kw: object) -> HostdBootConfig:
    return HostdBootConfig(
        credentials=new_host_credentials("host-abc123"),
        listen_port=7443,
        runtimes=("gvisor", "qemu-microvm"),
        agent_id="agent-1",
        tenant_id="tenant-1",
        **kw,  # type: ignore[arg-type]
    )


def test_credentials_are_a_fresh_p256_key_and_a_ten_year_self_signed_non_ca_cert() -> None:
    """CN is the host key, the key is P-256, the cert signs itself and is no CA."""
    creds = new_host_credentials("host-abc123")
    cert = x509.load_pem_x509_certificate(creds.cert_pem)
    assert cert.subject == cert.issuer
    assert cert.subject.rfc4514_string() == "CN=host-abc123"
    public = cert.public_key()
    assert isinstance(public, ec.EllipticCurvePublicKey)
    assert public.curve.name == "secp256r1"
    assert (cert.not_valid_after_utc - cert.not_valid_before_utc).days >= 3650
    assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False
    assert len(base64.urlsafe_b64decode(creds.secret)) == 32
    assert new_host_credentials("host-abc123").secret != creds.secret
    assert creds.secret not in repr(creds)
    assert "PRIVATE" not in repr(creds)


def test_user_data_round_trips_through_parse() -> None:
    """parse_user_data(render_user_data(cfg)) == cfg, credentials byte for byte."""
    cfg = boot(package_spec="corral==0.1.0", warm_pool="base:1:512:gvisor=2")
    assert parse_user_data(render_user_data(cfg)) == cfg
    assert cfg.hostd_config().warm_pool == "base:1:512:gvisor=2"


def test_user_data_is_cloud_config_under_16_kib() -> None:
    """The document starts with #cloud-config, is YAML (cloud-init's loader) and < 16 KiB."""
    yaml = pytest.importorskip("yaml")
    text = render_user_data(boot())
    assert text.startswith("#cloud-config\n")
    assert len(text.encode()) < MAX_USER_DATA
    assert yaml.safe_load(text) == json.loads(text.split("\n", 1)[1])


def test_user_data_writes_key_and_secret_root_only_and_installs_the_package() -> None:
    """Key and secret are 0600; hostd.json points at them; runcmd runs the install script
    with the package spec as its own argument (no shell)."""
    cfg = boot(package_spec="corral[aws]>=0.1")
    doc = json.loads(render_user_data(cfg).split("\n", 1)[1])
    files = {f["path"]: f for f in doc["write_files"]}
    assert files[str(KEY_FILE)]["permissions"] == "0600"
    assert files[str(SECRET_FILE)]["permissions"] == "0600"
    hostd = parse_config(base64.b64decode(files[str(CONFIG_FILE)]["content"]).decode())
    assert (hostd.key_file, hostd.secret_file) == (KEY_FILE, SECRET_FILE)
    assert hostd.runtimes == ("gvisor", "qemu-microvm")
    assert doc["runcmd"][0][-1] == "corral[aws]>=0.1"
    unit = next(f for p, f in files.items() if p.endswith("corral-hostd.service"))
    assert b"KillMode=process" in base64.b64decode(unit["content"])


def test_rendering_and_parsing_log_neither_the_secret_nor_the_key() -> None:
    """Nothing logged while the user data is made and read holds the secret or key."""
    cfg = boot()
    with structlog.testing.capture_logs() as logs:
        parse_user_data(render_user_data(cfg))
    text = repr(logs)
    assert cfg.credentials.secret not in text
    assert cfg.credentials.key_pem.decode() not in text


def test_bad_user_data_is_refused_clearly() -> None:
    """No header, broken JSON, or a missing file: InvalidArgumentError, no traceback text."""
    for text in ("", "#!/bin/sh\n", "#cloud-config\n{", "#cloud-config\n{\"write_files\": []}"):
        with pytest.raises(InvalidArgumentError, match="user data"):
            parse_user_data(text)
    with pytest.raises(InvalidArgumentError, match="package_spec"):
        render_user_data(boot(package_spec="corral\nrm -rf /"))


def test_a_config_with_an_unknown_key_is_refused() -> None:
    """A typo in hostd.json stops the start instead of silently using a default."""
    good = json.loads(boot().hostd_config().to_json())
    assert parse_config(json.dumps(good)) == boot().hostd_config()
    with pytest.raises(InvalidArgumentError, match="listen_prot"):
        parse_config(json.dumps({**good, "listen_prot": 1}))
    with pytest.raises(InvalidArgumentError, match="warm_pool: warm pool entry 'base:1'"):
        parse_config(json.dumps({**good, "warm_pool": "base:1"}))


@pytest.mark.parametrize("which", ["key_file", "secret_file"])
@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660])
def test_a_key_or_secret_others_can_read_is_refused(tmp_path: Path, which: str, mode: int) -> None:
    """hostd refuses to start while group or others can read the key or the secret."""
    creds = new_host_credentials("h")
    config = dataclasses.replace(
        boot().hostd_config(),
        cert_file=tmp_path / "cert.pem",
        key_file=tmp_path / "key.pem",
        secret_file=tmp_path / "secret",
    )
    for path, data in ((config.cert_file, creds.cert_pem), (config.key_file, creds.key_pem),
                       (config.secret_file, creds.secret.encode())):  # fmt: skip
        path.write_bytes(data)
        os.chmod(path, 0o600)
    assert load_credentials(config) == HostCredentials(creds.secret, creds.cert_pem, creds.key_pem)
    os.chmod(getattr(config, which), mode)
    with pytest.raises(CorralError, match=f"mode {mode:04o}.*chmod 600"):
        load_credentials(config)
    with pytest.raises(CorralError, match="cannot read"):
        check_private(tmp_path / "missing")
