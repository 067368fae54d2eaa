"""The agent's configuration: every V1 key with its V1 default, plus orchagent's own keys.

The file format is orchestrator-agent's JSON so an existing
``/etc/orchestrator-agent.conf.json`` works unchanged.  Keys match case-insensitively (as Go's
encoding/json did).  Every problem is found in one pass and reported in one :class:`ConfigError`,
one line per problem naming the file and the key, so an administrator fixes them all at once.
"""

from __future__ import annotations

import difflib
import ipaddress
import json
import os
import socket
from typing import Any, Callable, Iterable

import attrs

from orchagent.seed.authentication import MAX_LANES
from orchagent.seed.lanes import lane_count
from orchagent.seed.throttle import MAX_BYTES_PER_SECOND, minimum_rate

#: Where V1 looked when no ``--config`` was given, decoded in order, later files on top.
#: orchagent's own path sits after V1's system-wide file.
DEFAULT_CONFIG_FILES = (
    "/etc/orchestrator-agent.conf.json",
    "/etc/orchagent/orchagent.conf.json",
    "conf/orchestrator-agent.conf.json",
    "orchestrator-agent.conf.json",
)


#: The name of the one volume ``SnapshotBackend: "hotbackup"`` lists.
HOT_BACKUP_VOLUME = "hot-backup"


class ConfigError(Exception):
    """The configuration cannot be used; ``problems`` are one line each, saying where and why."""

    def __init__(self, problems: str | list[str]):
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        super().__init__("\n".join(self.problems))


# --- value kinds: each turns a JSON value into a Python value or raises ValueError -------------


def _string(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError(f"must be a string, got {_json_type(value)}")
    return value


def _uint(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"must be a non-negative integer, got {json.dumps(value)}")
    return value


def _bool(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"must be true or false, got {json.dumps(value)}")
    return value


def _string_list(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"must be a list of strings, got {json.dumps(value)}")
    return tuple(value)


def _string_or_list(value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        return (value,) if value else ()
    return tuple(v for v in _string_list(value) if v)


def _string_map(value: Any) -> dict[str, str]:
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        raise ValueError(f"must be an object mapping names to command strings, got {json.dumps(value)}")
    return dict(value)


def _json_type(value: Any) -> str:
    return {dict: "an object", list: "a list", bool: "a boolean", type(None): "null"}.get(
        type(value), json.dumps(value)
    )


def _key(name: str, default: Any, kind: Callable[[Any], Any]) -> Any:
    return attrs.field(default=default, metadata={"key": name, "kind": kind})


@attrs.frozen
class Config:
    """One field per configuration key; ``metadata["key"]`` is the JSON key name."""

    # V1 keys, V1 defaults (contract A.4.2)
    snapshot_mount_point: str = _key("SnapshotMountPoint", "", _string)
    continuous_poll_seconds: int = _key("ContinuousPollSeconds", 60, _uint)
    resubmit_agent_interval_minutes: int = _key("ResubmitAgentIntervalMinutes", 60, _uint)
    create_snapshot_command: str = _key("CreateSnapshotCommand", "", _string)
    available_local_snapshot_hosts_command: str = _key("AvailableLocalSnapshotHostsCommand", "", _string)
    available_snapshot_hosts_command: str = _key("AvailableSnapshotHostsCommand", "", _string)
    snapshot_volumes_filter: str = _key("SnapshotVolumesFilter", "", _string)
    mysql_datadir_command: str = _key("MySQLDatadirCommand", "", _string)
    mysql_port_command: str = _key("MySQLPortCommand", "", _string)
    mysql_delete_datadir_content_command: str = _key("MySQLDeleteDatadirContentCommand", "", _string)
    mysql_service_stop_command: str = _key("MySQLServiceStopCommand", "", _string)
    mysql_service_start_command: str = _key("MySQLServiceStartCommand", "", _string)
    mysql_service_status_command: str = _key("MySQLServiceStatusCommand", "", _string)
    receive_seed_data_command: str = _key("ReceiveSeedDataCommand", "", _string)
    send_seed_data_command: str = _key("SendSeedDataCommand", "", _string)
    post_copy_command: str = _key("PostCopyCommand", "", _string)
    mysql_client_command: str = _key("MySQLClientCommand", "mysql", _string)
    agents_servers: tuple[str, ...] = _key("AgentsServer", (), _string_or_list)
    agents_server_port: str = _key("AgentsServerPort", "", _string)
    http_port: int = _key("HTTPPort", 3002, _uint)
    http_auth_user: str = _key("HTTPAuthUser", "", _string)
    http_auth_password: str = _key("HTTPAuthPassword", "", _string)
    use_ssl: bool = _key("UseSSL", False, _bool)
    use_mutual_tls: bool = _key("UseMutualTLS", False, _bool)
    ssl_skip_verify: bool = _key("SSLSkipVerify", False, _bool)
    ssl_private_key_file: str = _key("SSLPrivateKeyFile", "", _string)
    ssl_cert_file: str = _key("SSLCertFile", "", _string)
    ssl_ca_file: str = _key("SSLCAFile", "", _string)
    ssl_valid_ous: tuple[str, ...] = _key("SSLValidOUs", (), _string_list)
    status_endpoint: str = _key("StatusEndpoint", "/api/status", _string)
    status_ou_verify: bool = _key("StatusOUVerify", False, _bool)
    status_bad_seconds: int = _key("StatusBadSeconds", 300, _uint)
    http_timeout_seconds: int = _key("HttpTimeoutSeconds", 10, _uint)
    exec_with_sudo: bool = _key("ExecWithSudo", False, _bool)
    custom_commands: dict[str, str] = _key("CustomCommands", attrs.Factory(dict), _string_map)
    token_hint_file: str = _key("TokenHintFile", "", _string)
    token_http_header: str = _key("TokenHttpHeader", "", _string)

    # orchagent's own keys
    http_bind_address: str = _key("HTTPBindAddress", "", _string)
    agent_hostname: str = _key("AgentHostname", "", _string)
    command_timeout_seconds: int = _key("CommandTimeoutSeconds", 300, _uint)
    state_directory: str = _key("StateDirectory", "/var/lib/orchagent", _string)
    snapshot_backend: str = _key("SnapshotBackend", "lvm", _string)
    btrfs_snapshot_directory: str = _key("BtrfsSnapshotDirectory", "", _string)
    mysql_config_file: str = _key("MySQLConfigFile", "", _string)
    mysql_error_log_file: str = _key("MySQLErrorLogFile", "", _string)
    error_log_tail_lines: int = _key("ErrorLogTailLines", 20, _uint)
    allowed_path_roots: tuple[str, ...] = _key("AllowedPathRoots", (), _string_list)
    apply_relaylog_max_bytes: int = _key("ApplyRelaylogMaxBytes", 256 * 1024 * 1024, _uint)
    seed_transfer_port: int = _key("SeedTransferPort", 21234, _uint)
    seed_transfer_secret: str = _key("SeedTransferSecret", "", _string)
    seed_transfer_valid_ous: tuple[str, ...] = _key("SeedTransferValidOUs", (), _string_list)
    seed_stall_timeout_seconds: int = _key("SeedStallTimeoutSeconds", 300, _uint)
    seed_max_bytes_per_second: int = _key("SeedMaxBytesPerSecond", 0, _uint)
    seed_compression: str = _key("SeedCompression", "auto", _string)
    seed_parallel_streams: int = _key("SeedParallelStreams", 0, _uint)  # 0: the agent chooses
    local_seed_source_hosts: tuple[str, ...] = _key("LocalSeedSourceHosts", (), _string_list)
    remote_seed_source_hosts: tuple[str, ...] = _key("RemoteSeedSourceHosts", (), _string_list)
    metrics_enabled: bool = _key("MetricsEnabled", True, _bool)
    audit_log_file: str = _key("AuditLogFile", "", _string)
    max_concurrent_commands: int = _key("MaxConcurrentCommands", 16, _uint)
    max_concurrent_seeds: int = _key("MaxConcurrentSeeds", 4, _uint)
    token_file: str = _key("TokenFile", "", _string)
    http_max_connections: int = _key("HTTPMaxConnections", 4096, _uint)
    http_header_timeout_seconds: int = _key("HTTPHeaderTimeoutSeconds", 15, _uint)
    seed_transfer_max_connections: int = _key("SeedTransferMaxConnections", 256, _uint)
    seed_handshake_timeout_seconds: int = _key("SeedHandshakeTimeoutSeconds", 30, _uint)
    hot_backup_tool: str = _key("HotBackupTool", "mariabackup", _string)
    hot_backup_defaults_file: str = _key("HotBackupDefaultsFile", "", _string)
    hot_backup_prepare_memory_mb: int = _key("HotBackupPrepareMemoryMB", 256, _uint)
    seed_start_replication: bool = _key("SeedStartReplication", False, _bool)
    seed_replication_user: str = _key("SeedReplicationUser", "", _string)
    seed_replication_password_file: str = _key("SeedReplicationPasswordFile", "", _string)
    send_seed_data_idle_timeout_seconds: int = _key("SendSeedDataIdleTimeoutSeconds", 0, _uint)

    @property
    def agents_urls(self) -> tuple[str, ...]:
        """Base URLs of every orchestrator node: ``AgentsServer`` + ``AgentsServerPort``, as V1."""
        return tuple(server.rstrip("/") + self.agents_server_port for server in self.agents_servers)


def config_keys() -> dict[str, attrs.Attribute]:
    """JSON key name -> field, in declaration order."""
    return {field.metadata["key"]: field for field in attrs.fields(Config)}


def load_config(
    paths: Iterable[str] | None = None,
    *,
    warn: Callable[[str], None] = lambda message: None,
    hostname: Callable[[], str] = socket.getfqdn,
    kernel_hostname: Callable[[], str] = socket.gethostname,
) -> Config:
    """Read the configuration.

    ``paths=None`` means V1's lookup: every existing file of :data:`DEFAULT_CONFIG_FILES`,
    layered.  An explicit list (from ``--config``) must exist.  ``warn`` receives one message per
    unknown key.  Without ``AgentHostname`` the name is ``hostname()`` (the FQDN), else
    ``kernel_hostname()``, whichever is not a loopback name.
    """
    explicit = paths is not None
    values: dict[str, Any] = {}
    origins: dict[str, str] = {}
    problems: list[str] = []
    for path in DEFAULT_CONFIG_FILES if paths is None else paths:
        if not explicit and not os.path.exists(path):
            continue
        for name, (value, origin) in _read_file(path, warn, problems).items():
            if isinstance(value, dict) and isinstance(values.get(name), dict):
                value = {**values[name], **value}  # V1 merged maps such as CustomCommands
            values[name], origins[name] = value, origin
    if values.get("agent_hostname"):
        if is_loopback_name(values["agent_hostname"]):
            warn(f"{origins['agent_hostname']}: {values['agent_hostname']!r} is a loopback name; "
                 "orchestrator on another host cannot reach the agent by it")
    else:
        values["agent_hostname"] = _host_name((hostname, kernel_hostname), problems)
    config = Config(**values)
    _validate(config, lambda name: origins.get(name, "built-in default"), problems)
    if problems:
        raise ConfigError(problems)
    return config


def is_loopback_name(name: str) -> bool:
    """``localhost`` and its variants or a loopback address: names every host has for itself."""
    name = name.strip().rstrip(".").lower()
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        pass
    return (name.split(".")[0] in ("localhost", "localhost4", "localhost6", "ip6-localhost", "ip6-loopback")
            or name.endswith(".localhost"))


def _host_name(sources: tuple[Callable[[], str], ...], problems: list[str]) -> str:
    """The first name from ``sources`` that another host could use to tell this one apart."""
    seen = []
    for source in sources:
        name = source().strip()
        if name and not is_loopback_name(name):
            return name
        seen.append(repr(name))
    problems.append(f"AgentHostname: not set, and this host's names ({' and '.join(seen)}) are loopback "
                    "names that every host has; set AgentHostname to the name orchestrator reaches this host by")
    return ""


def _read_file(path: str, warn: Callable[[str], None], problems: list[str]) -> dict[str, tuple[Any, str]]:
    """Parse one file into ``{field name: (python value, "file: Key")}``; bad keys go to ``problems``."""
    try:
        with open(path, encoding="utf-8") as f:
            document = json.load(f)
    except OSError as e:
        problems.append(f"{path}: cannot read configuration file: {e.strerror}")
        return {}
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        problems.append(f"{path}: not valid JSON: {e}")
        return {}
    if not isinstance(document, dict):
        problems.append(f"{path}: the configuration must be a JSON object of keys and values")
        return {}
    keys = config_keys()
    by_lower = {name.lower(): name for name in keys}
    parsed = {}
    for raw_name, raw_value in document.items():
        name = by_lower.get(raw_name.lower())
        if name is None:
            close = difflib.get_close_matches(raw_name, keys, n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            warn(f"{path}: unknown configuration key {raw_name}{hint}; ignored")
            continue
        field = keys[name]
        try:
            parsed[field.name] = (field.metadata["kind"](raw_value), f"{path}: {name}")
        except ValueError as e:
            problems.append(f"{path}: {name}: {e}")
    return parsed


def _validate(config: Config, origin: Callable[[str], str], problems: list[str]) -> None:
    """Checks of ranges, of keys that need other keys, and of the file system."""

    def fail(field: str, problem: str) -> None:
        where = origin(field)
        if where == "built-in default":
            where = config_field_key(field)
        problems.append(f"{where}: {problem}")

    for field in ("http_port", "seed_transfer_port"):
        if not 1 <= getattr(config, field) <= 65535:
            fail(field, f"port must be from 1 to 65535, got {getattr(config, field)}")
    for field in ("max_concurrent_commands", "max_concurrent_seeds"):
        if getattr(config, field) < 1:
            fail(field, "must be at least 1")
    for field in ("http_max_connections", "http_header_timeout_seconds", "seed_transfer_max_connections",
                  "seed_handshake_timeout_seconds"):
        if getattr(config, field) < 1:
            fail(field, "must be at least 1 (0 would refuse every connection)")
    if config.seed_stall_timeout_seconds < 2:
        fail("seed_stall_timeout_seconds", "must be at least 2 (a seed connection silent for half of it is dropped "
             f"and resumed; 0 would fail every transfer at once), got {config.seed_stall_timeout_seconds}")
    minimum = minimum_rate(config.seed_stall_timeout_seconds, lane_count(config.seed_parallel_streams))
    if config.seed_max_bytes_per_second and not minimum <= config.seed_max_bytes_per_second <= MAX_BYTES_PER_SECOND:
        fail("seed_max_bytes_per_second", f"must be 0 (no limit) or from {minimum} (slower, the pauses between "
             f"a stream's 1 MB batches come near SeedStallTimeoutSeconds) to {MAX_BYTES_PER_SECOND}, "
             f"got {config.seed_max_bytes_per_second}")
    if not config.status_endpoint.startswith("/"):
        fail("status_endpoint", f"must be a path starting with '/', got {config.status_endpoint!r}")
    if config.seed_parallel_streams > MAX_LANES:
        fail("seed_parallel_streams",
             f"must be 0 (the agent chooses) to {MAX_LANES}, got {config.seed_parallel_streams}")
    if config.seed_compression not in ("auto", "zstd", "none"):
        fail("seed_compression", f"must be \"auto\", \"zstd\" or \"none\", got {config.seed_compression!r}")
    if config.snapshot_backend not in ("lvm", "btrfs", "hotbackup"):
        fail("snapshot_backend", f"must be \"lvm\", \"btrfs\" or \"hotbackup\", got {config.snapshot_backend!r}")
    if config.hot_backup_tool not in ("mariabackup", "xtrabackup"):
        fail("hot_backup_tool", f"must be \"mariabackup\" or \"xtrabackup\", got {config.hot_backup_tool!r}")
    if config.snapshot_backend == "hotbackup":
        if not os.path.isabs(config.hot_backup_defaults_file):
            fail("snapshot_backend", "SnapshotBackend \"hotbackup\" needs HotBackupDefaultsFile, the absolute path "
                 "of a root-only option file with the backup user's [client] user and password, got "
                 f"{config.hot_backup_defaults_file!r}")
        if config.snapshot_volumes_filter not in HOT_BACKUP_VOLUME:
            fail("snapshot_volumes_filter", f"SnapshotBackend \"hotbackup\" lists one volume, {HOT_BACKUP_VOLUME!r}; "
                 f"SnapshotVolumesFilter {config.snapshot_volumes_filter!r} would hide it (leave it empty)")
    if config.hot_backup_prepare_memory_mb < 16:
        fail("hot_backup_prepare_memory_mb", "must be at least 16 (MB of memory for the backup's --prepare)")
    if config.seed_start_replication:
        if not config.seed_replication_user:
            fail("seed_start_replication", "SeedStartReplication needs SeedReplicationUser (the source's "
                 "replication user, with REPLICATION SLAVE)")
        if not os.path.isabs(config.seed_replication_password_file):
            fail("seed_start_replication", "SeedStartReplication needs SeedReplicationPasswordFile, the absolute "
                 "path of a root-only file holding that user's password")
    if config.snapshot_backend == "btrfs" and not os.path.isabs(config.btrfs_snapshot_directory):
        fail("snapshot_backend", "SnapshotBackend \"btrfs\" needs BtrfsSnapshotDirectory, an absolute "
             f"path on the datadir's btrfs file system, got {config.btrfs_snapshot_directory!r}")
    for server in config.agents_servers:
        if not server.startswith(("http://", "https://")):
            fail("agents_servers", f"{server!r} must be a URL starting with http:// or https://")
    if config.agents_server_port and not config.agents_server_port.startswith(":"):
        fail("agents_server_port", f"must look like \":3001\" (it is appended to AgentsServer), "
             f"got {config.agents_server_port!r}")
    if config.use_ssl:
        for field in ("ssl_cert_file", "ssl_private_key_file"):
            if not getattr(config, field):
                fail("use_ssl", f"UseSSL needs {config_field_key(field)} to be set")
    if config.use_mutual_tls:
        if not config.use_ssl:
            fail("use_mutual_tls", "UseMutualTLS needs UseSSL")
        if not config.ssl_ca_file:
            fail("use_mutual_tls", "UseMutualTLS needs SSLCAFile (the CA that signs client certificates)")
        if not config.ssl_valid_ous:
            fail("use_mutual_tls", "UseMutualTLS needs SSLValidOUs (the client OUs to accept)")
    if config.seed_transfer_valid_ous:
        if not config.use_ssl:
            fail("seed_transfer_valid_ous", "SeedTransferValidOUs needs UseSSL (senders present their "
                 "certificates over TLS)")
        if not config.ssl_ca_file:
            fail("seed_transfer_valid_ous", "SeedTransferValidOUs needs SSLCAFile (the CA that signs the "
                 "agents' certificates)")
    for field in ("ssl_cert_file", "ssl_private_key_file", "ssl_ca_file"):
        path = getattr(config, field)
        if path and not os.access(path, os.R_OK):
            fail(field, f"cannot read {path!r}")
    if config.http_auth_user and not config.http_auth_password:
        fail("http_auth_user", "HTTPAuthUser is set but HTTPAuthPassword is empty")


def config_field_key(field_name: str) -> str:
    """The JSON key of a :class:`Config` field, for messages."""
    return attrs.fields_dict(Config)[field_name].metadata["key"]

