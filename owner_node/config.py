"""The owner's configuration: the only place the owner's limits and budget come from."""

from __future__ import annotations

import math
import tomllib
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Any

from owner_node.ledger import NETWORK_FS_POLICIES
from owner_node.randomness import check_sampler
from shared.accounting import ACCOUNTANTS, DEFAULT_DELTA, MAX_EPSILON, MIN_DELTA
from shared.compute.choices import DEFAULT_PRECISION, check_precision
from shared.images.policy import DEFAULT_RESIZE, PATIENT_SOURCES, ReadPolicy
from shared.images.resize import MAX_IMAGE_SIZE
from shared.images.source import ImageSource
from shared.settings import Bound, SettingError, bounded, check_number, check_settings
from shared.wire.messages import PRIVACY_UNITS
from shared.wire.protocol import MAX_HEADER_BYTES, MAX_MESSAGE_BYTES
from shared.wire.rpc.address import is_loopback
from shared.wire.rpc.relay_config import toml_string

# The largest reply any transport carries: the decoder's and gRPC's cap, less the header's share.
MAX_REPLY_BYTES = MAX_MESSAGE_BYTES - MAX_HEADER_BYTES


@dataclass(frozen=True)
class Limits:
    """Caps on what one request may ask for; anything beyond is refused before any work."""

    max_draws_per_request: int = bounded(100, int, 1, 100_000)
    max_sample_rate: float = bounded(0.05, float, 0, 1, low_open=True)
    # Bounds the owner's compute per draw: every class is sampled at one rate q, so a large class
    # contributes q * n_c records; a request expecting more records per draw than this is refused.
    max_sample_per_draw: int = bounded(10_000, int, 1, 10**9)
    max_subspace_dim: int = bounded(2048, int, 1, 10**6)
    max_network_width: int = bounded(256, int, 1, 4096)
    max_network_depth: int = bounded(6, int, 1, 12)  # a 224 or 256 px image needs 6 (depth_for_image_size)
    min_noise_multiplier: float = bounded(0.3, float, 0, 1e6, low_open=True)
    max_message_bytes: int = bounded(64 * 1024 * 1024, int, 1, MAX_REPLY_BYTES)
    # Bounds one draw's basis work (auxiliary vectors in float32 plus the basis): this is what keeps
    # the owner's peak memory in check for gradient signals, whose vectors have one entry per parameter.
    max_basis_mb: int = bounded(1024, int, 1, 1 << 20)
    # Bounds the activations of one pass through a network: the owner works through each sample in
    # chunks this size allows (high-resolution images go a few at a time) and refuses a network whose
    # single image would need more (shared.compute.networks.NetworkSpec.activation_bytes).
    max_activation_mb: float = bounded(512.0, float, 0, 1 << 20, low_open=True)
    # Synchronised DP-KIP: steps per request (each is a release) and synthetic images per request;
    # a step costs the owner n_sample x m per-example image gradients (seconds to minutes on a CPU).
    max_kip_steps_per_request: int = bounded(50, int, 1, 100_000)
    max_kip_images: int = bounded(1000, int, 1, 10**6)
    # Releases one run plan may reserve: bounds the accountant's work for a plan (PRV's grid grows with
    # the square root of the releases; SECURITY.md gives the measured worst case within these limits).
    max_releases_per_plan: int = bounded(10_000, int, 1, 10**6)

    def __post_init__(self) -> None:
        try:
            check_settings(self, "[limits]")
        except SettingError as exc:
            if "max_message_bytes" in str(exc):
                # A reply between the owner's limit and a transport's cap would be reserved and recorded,
                # then fail to send on every retry: the limit must fit every transport it may travel on.
                raise SettingError(
                    f"{exc} (the gRPC channel and message decoder stop at {MAX_MESSAGE_BYTES} bytes, less room "
                    "for the message header; SQLite stores at most 1e9 bytes a reply)"
                ) from None
            raise

    def to_dict(self) -> dict:
        return dict(self.__dict__)


@dataclass(frozen=True)
class ServiceConfig:
    """Where the owner service listens. Off loopback it must use mutual TLS: ``client_ca`` demands client certs.

    ``client_names`` are the only client certificates it answers (common name or DNS subject
    alternative name, see owner_node.peers): ``client_ca`` says which CA vouches for a caller, these
    say which caller. Mutual TLS without them is refused, so that a CA signing other clients (another
    hospital's relay, a colleague's tool) cannot open this owner.
    """

    listen: str = "127.0.0.1:50051"
    tls_cert: Path | None = None
    tls_key: Path | None = None
    client_ca: Path | None = None
    client_names: tuple[str, ...] = ()
    max_workers: int = bounded(4, int, 1, 256, key="[service] max_workers")

    def __post_init__(self) -> None:
        check_settings(self, "[service]")
        if not isinstance(self.listen, str):
            raise ValueError(
                f'[service] listen must be an address in quotes, e.g. "127.0.0.1:50051", not {self.listen!r}'
            )
        names = self.client_names
        if isinstance(names, str) or not all(isinstance(n, str) for n in names):
            raise ValueError(f'[service] client_names must be a list of names, e.g. ["relay-a"], not {names!r}')
        for name in names:
            if not name or name != name.strip() or "*" in name:
                raise ValueError(
                    f"[service] client_names entry {name!r}: give a certificate's exact name "
                    "(no blanks around it, no wildcard)"
                )
        object.__setattr__(self, "client_names", tuple(names))
        if self.client_names and self.client_ca is None:
            raise ValueError("[service] client_names needs client_ca (names are only checked on verified certificates)")
        if self.client_ca is not None and not self.client_names:
            raise ValueError(
                "[service] client_ca is set but client_names is empty: the service would answer any certificate "
                'that CA signs. List the relay certificate\'s name, e.g. client_names = ["relay-a"] '
                "(deploy/make_certs.sh prints it)"
            )
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("[service] needs both tls_cert and tls_key, or neither")
        if self.tls_cert is None and not is_loopback(self.listen):
            raise ValueError(
                f"[service] listen = {self.listen!r} is not a loopback address: "
                "set tls_cert and tls_key (and client_ca to require client certificates)"
            )
        if self.client_ca is not None and self.tls_cert is None:
            raise ValueError("[service] client_ca needs tls_cert and tls_key")
        if self.client_ca is None and not is_loopback(self.listen):
            raise ValueError(
                f"[service] listen = {self.listen!r} is not a loopback address and no client certificate is asked "
                "for: any caller that reaches it could spend this owner's budget. Set client_ca (this owner's relay "
                'CA) and client_names (its relay, e.g. ["relay-a"]); deploy/make_certs.sh makes both'
            )


NORMALIZATION_MEAN = Bound(float, -1e6, 1e6)
NORMALIZATION_STD = Bound(float, 0, 1e6, low_open=True)


def check_delta_for_records(delta: float, records: int, unit: str = "image") -> None:
    """Refuse a delta that is not well below 1 / (the number of records protected).

    With delta >= 1/n a mechanism may release one record outright and still be "(epsilon, delta)-DP";
    the accountants then also give meaningless (even negative) epsilons.
    """
    what = "patients" if unit == "patient" else "private records"
    if records < 1:
        raise ValueError(f"no {what} to protect")
    if not delta < 1.0 / records:
        suggestion = 10.0 ** math.floor(math.log10(0.1 / records))
        raise ValueError(
            f"[privacy] delta = {delta:g} is not below 1/n = {1.0 / records:.3g} for n = {records} {what}: such a "
            f"delta allows releasing a whole record. Use a delta well below 1/n, e.g. {suggestion:g}"
        )


# owner.toml tables that are OwnerConfig fields of their own (dataclasses), each named as its field.
NESTED_TABLES = ("limits", "service")
# Paths in owner.toml are relative to the file; these fields hold paths.
PATH_FIELDS = ("data_path", "aux_path", "ledger_path", "image_cache")
SERVICE_PATHS = ("tls_cert", "tls_key", "client_ca")


def at(table: str, key: str, default: Any = MISSING, bound: Bound | None = None) -> Any:
    """A field read from ``[table] key`` of owner.toml ("" for the top level): the one statement of
    where a setting lives, its default and its range, from which loading, writing and the checks follow."""
    name = f"[{table}] {key}" if table else key
    metadata = {"toml": (table, key), "key": name}
    if bound is not None:
        metadata["bound"] = bound
    return field(default=default, metadata=metadata)


@dataclass(frozen=True)
class OwnerConfig:
    """The owner's settings. Each field says where owner.toml holds it (``at``): ``load`` and
    ``write_config`` follow those statements, so a default or a key is written once, here."""

    aux_path: Path = at("auxiliary", "path")  # public auxiliary images; requests carry their SHA-256
    ledger_path: Path = at("ledger", "path")
    epsilon: float = at("privacy", "epsilon", bound=Bound(float, 0, MAX_EPSILON, low_open=True))
    owner_id: str = at("", "owner_id", "owner")
    # one of shared.images.SOURCE_KINDS: image-folder | csv | npz | medmnist | torchvision | fashion-mnist
    data_source: str = at("data", "source", "fashion-mnist")
    data_path: Path | None = at("data", "path", None)
    # Below 1 / (records protected): checked once the data are loaded (check_delta_for_records).
    delta: float = at("privacy", "delta", DEFAULT_DELTA, Bound(float, MIN_DELTA, 1, high_open=True))
    clip_norm: float = at("privacy", "clip_norm", 1.0, Bound(float, 0, 1e6, low_open=True))
    accountant: str = at("privacy", "accountant", "prv")
    noise_sampler: str = at("privacy", "noise", "csprng")  # "csprng" (ChaCha20) or "exact" (OpenDP)
    # Public pixel scaling (mean, std). None: taken from the *public* auxiliary set's pixels, never
    # from the private ones (Describe publishes it, so it must not depend on private data).
    normalization: tuple[float, float] | None = at("data", "normalization", None)
    limits: Limits = field(default_factory=Limits)
    service: ServiceConfig = field(default_factory=ServiceConfig)
    # How the private images are read ([data]); image_size and channels are public (Describe).
    image_size: int | None = at("data", "image_size", None, Bound(int, 1, MAX_IMAGE_SIZE, optional=True))
    channels: int | None = at("data", "channels", None, Bound(int, 1, 3, optional=True))
    resize: str = at("data", "resize", DEFAULT_RESIZE)  # one of shared.images.policy.RESIZE_POLICIES
    classes: tuple[str, ...] | None = at("data", "classes", None)  # explicit order; default: natural sort
    data_split: str = at("data", "split", "train")  # array kinds (medmnist, torchvision, fashion-mnist)
    dataset_name: str | None = at("data", "name", None)  # torchvision: MNIST, FashionMNIST, CIFAR10, ...
    image_cache: Path | None = at("data", "cache", None)  # decoded private images; default beside the ledger
    # A share of the private set kept for ``owner-evaluate``: never sampled, never released, never sent.
    # Drawn per class with ``holdout_seed``, so the same images stay out across restarts.
    holdout: float = at("data", "holdout", 0.0, Bound(float, 0, 1, high_open=True))
    holdout_seed: int = at("data", "holdout_seed", 0, Bound(int, 0, 2**63 - 1))
    # [privacy] unit: what one differential-privacy record is. "patient": every image of a patient
    # (the manifest's ``patient_column``) is one record; patients are sampled, and a patient's whole
    # contribution to a release is clipped to C.
    privacy_unit: str = at("privacy", "unit", "image")
    patient_column: str = at("data", "patient_column", "patient_id")
    patient_from: str = at("data", "patient_from", "column")  # one of PATIENT_SOURCES
    # Files that cannot be decoded ("refuse" or "skip", at most max_skipped of them) and volumes read
    # as 2D slices (volume_axis, slice_range): shared.images.policy.ReadPolicy.
    unreadable: str = at("data", "unreadable", ReadPolicy.unreadable)
    max_skipped: float = at("data", "max_skipped", ReadPolicy.max_skipped, Bound(float, 0, 1))
    volume_axis: int | None = at("data", "volume_axis", None, Bound(int, 0, 2, optional=True))
    slice_range: tuple[float, float] = at("data", "slice_range", ReadPolicy.slice_range)
    # [privacy] class_counts: "public" (Describe gives the true counts) or "dp" (published once with
    # the Gaussian mechanism for class_counts_epsilon of the budget; see owner_node.class_counts).
    class_counts: str = at("privacy", "class_counts", "public")
    class_counts_epsilon: float = at(
        "privacy", "class_counts_epsilon", 0.05, Bound(float, 0, MAX_EPSILON, low_open=True)
    )
    # patient mode: a patient's images-per-class vector, clipped
    class_counts_patient_clip: float = at("privacy", "class_counts_patient_clip", 10.0, Bound(float, 1, 1e6))
    # Where releases are computed: "cpu", "auto", "cuda" or "cuda:N" (shared.compute.device), and the
    # precision of the network passes ("auto", "float32" or "bf16"); neither changes the sensitivity bound.
    device: str = at("compute", "device", "cpu")
    precision: str = at("compute", "precision", DEFAULT_PRECISION)
    # "refuse" (default) a ledger on NFS/SMB, or use SQLite's rollback journal there
    # ("rollback-journal": only safe when this one machine ever opens the ledger).
    ledger_on_network_filesystem: str = at("ledger", "on_network_filesystem", "refuse")

    def image_source(self) -> ImageSource:
        """The private set as ``shared.images`` loads it."""
        return ImageSource(
            kind=self.data_source,
            path=self.data_path,
            image_size=self.image_size,
            channels=self.channels,
            resize=self.resize,
            classes=self.classes,
            split=self.data_split,
            name=self.dataset_name,
            reading=ReadPolicy(self.unreadable, self.max_skipped, self.volume_axis, self.slice_range),
        )

    @property
    def record_unit(self) -> str:
        """The record one release protects, as the ledger binds it: "image", or a patient and how patients are found."""
        if self.privacy_unit != "patient":
            return "image"
        if self.patient_from == "column":
            return f"patient (column {self.patient_column!r})"
        return f"patient ({self.patient_from})"

    @property
    def image_cache_dir(self) -> Path:
        return self.image_cache if self.image_cache is not None else Path(self.ledger_path).parent / "image_cache"

    def __post_init__(self) -> None:
        check_settings(self)
        for f in fields(self):
            if f.type == "str" and not isinstance(getattr(self, f.name), str):
                raise SettingError(f"{f.metadata['key']} must be a string, got {getattr(self, f.name)!r}")
        if self.accountant not in ACCOUNTANTS:
            raise ValueError(f"[privacy] accountant must be one of {ACCOUNTANTS}, got {self.accountant!r}")
        check_sampler(self.noise_sampler)
        if self.ledger_on_network_filesystem not in NETWORK_FS_POLICIES:
            raise ValueError(
                f"[ledger] on_network_filesystem must be one of {NETWORK_FS_POLICIES}, "
                f"got {self.ledger_on_network_filesystem!r}"
            )
        try:
            self.image_source()
        except ValueError as exc:
            raise ValueError(f"[data] {exc}") from exc
        if self.privacy_unit not in PRIVACY_UNITS:
            raise ValueError(f"[privacy] unit must be one of {PRIVACY_UNITS}, got {self.privacy_unit!r}")
        if self.patient_from not in PATIENT_SOURCES:
            raise ValueError(f"[data] patient_from must be one of {PATIENT_SOURCES}, got {self.patient_from!r}")
        if self.privacy_unit == "patient" and self.patient_from == "column" and self.data_source != "csv":
            raise ValueError(
                '[privacy] unit = "patient" needs a CSV manifest ([data] source = "csv") with a '
                f"{self.patient_column!r} column naming each image's patient, or image files that name it: "
                '[data] patient_from = "dicom" (the DICOM PatientID) or "file" (each file, e.g. a volume)'
            )
        if self.privacy_unit == "patient" and self.data_source not in ("csv", "image-folder"):
            raise ValueError(
                f'[privacy] unit = "patient" needs image files (csv or image-folder), not {self.data_source}'
            )
        if self.class_counts not in ("public", "dp"):
            raise ValueError(f'[privacy] class_counts must be "public" or "dp", got {self.class_counts!r}')
        if self.class_counts == "dp" and not self.class_counts_epsilon < self.epsilon:
            raise ValueError(
                f"[privacy] class_counts_epsilon must be in (0, epsilon = {self.epsilon}), "
                f"got {self.class_counts_epsilon}"
            )
        check_precision(self.precision)
        if self.normalization is not None:
            pair = tuple(self.normalization)
            if len(pair) != 2:
                raise SettingError(f"[data] normalization must be [mean, std], got {self.normalization!r}")
            mean = check_number("[data] normalization mean", pair[0], NORMALIZATION_MEAN)
            std = check_number("[data] normalization std", pair[1], NORMALIZATION_STD)
            object.__setattr__(self, "normalization", (mean, std))

    @classmethod
    def load(cls, path: str | Path) -> OwnerConfig:
        """Read owner.toml: every key is one ``at`` field's (or a [limits]/[service] field's); unknown
        keys, missing required keys and wrong values are refused, naming the key."""
        path = Path(path)
        try:
            raw = tomllib.loads(path.read_text())
        except FileNotFoundError as exc:
            raise ValueError(f"owner config {path} does not exist") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ValueError(f"owner config {path} is not valid TOML: {exc}") from exc
        base = path.parent

        def resolve(p: object) -> Path | None:
            if not p:
                return None
            if not isinstance(p, str):
                raise ValueError(f"a path must be a string, got {p!r}")
            q = Path(p).expanduser()
            return q if q.is_absolute() else (base / q).resolve()

        known = toml_keys()
        unknown = [t for t in raw if t not in known[""]]
        if unknown:
            known_keys = ", ".join(known[""])
            raise ValueError(f"owner config {path}: unknown top-level key {unknown[0]!r}; known: {known_keys}")
        given: dict[str, Any] = {}
        try:
            for table, keys in known.items():
                if not table:
                    continue
                values = raw.get(table, {})
                if not isinstance(values, dict):
                    raise ValueError(f"owner config {path}: [{table}] must be a table")
                unknown = sorted(set(values) - set(keys))
                if unknown:
                    raise ValueError(f"owner config {path}: unknown [{table}] keys {unknown}; known: {', '.join(keys)}")
            for f in fields(cls):
                if f.name in NESTED_TABLES:
                    continue
                table, key = f.metadata["toml"]
                values = raw if not table else raw.get(table, {})
                if key not in values:
                    if f.default is MISSING:
                        raise ValueError(f"owner config {path} lacks required key [{table}] {key}")
                    continue
                value = values[key]
                if f.name in PATH_FIELDS:
                    value = resolve(value)
                elif isinstance(value, list):
                    value = tuple(value)
                given[f.name] = value
            svc = dict(raw.get("service", {}))
            for key in SERVICE_PATHS:
                svc[key] = resolve(svc.get(key))
            if "client_names" in svc and isinstance(svc["client_names"], list):
                svc["client_names"] = tuple(svc["client_names"])
            return cls(**given, limits=Limits(**raw.get("limits", {})), service=ServiceConfig(**svc))
        except TypeError as exc:
            raise ValueError(f"owner config {path}: {exc}") from exc


def toml_keys() -> dict[str, tuple[str, ...]]:
    """owner.toml's keys by table ("" for the top level, which lists the tables too)."""
    keys: dict[str, list[str]] = {"": []}
    for f in fields(OwnerConfig):
        if f.name in NESTED_TABLES:
            continue
        table, key = f.metadata["toml"]
        keys.setdefault(table, []).append(key)
        if table and table not in keys[""]:
            keys[""].append(table)
    keys["limits"] = [f.name for f in fields(Limits)]
    keys["service"] = [f.name for f in fields(ServiceConfig)]
    keys[""] += list(NESTED_TABLES)
    return {table: tuple(names) for table, names in keys.items()}


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, tuple | list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return toml_string(str(value))


def write_config(path: str | Path, config: OwnerConfig) -> None:
    """Write ``config`` as owner.toml (the simulation and deployment scripts use it); ``load`` reads it
    back equal. Settings that are None (absent) are left out."""
    tables: dict[str, list[str]] = {}
    for f in fields(config):
        if f.name in NESTED_TABLES:
            continue
        table, key = f.metadata["toml"]
        value = getattr(config, f.name)
        if value is not None:
            tables.setdefault(table, []).append(f"{key} = {_toml_value(value)}")
    for table in NESTED_TABLES:
        obj = getattr(config, table)
        tables[table] = [
            f"{f.name} = {_toml_value(getattr(obj, f.name))}"
            for f in fields(obj)
            if getattr(obj, f.name) not in (None, ())
        ]
    lines = tables.pop("")
    for table, entries in tables.items():
        lines += ["", f"[{table}]", *entries]
    Path(path).write_text("\n".join(lines) + "\n")
