"""Checks that docker-compose.yml works as written, without Docker: run it through ./check,
which installs the pinned YAML parser first (and runs `docker compose config` where Docker's
compose client is installed).

What `docker compose config` cannot see, because it reads only the compose file:

1. The files: every bind mount's source, the build context, the Dockerfile and what it
   copies, and the files each service's own configuration names inside the container
   (Prometheus's rule_files, Grafana's provisioned dashboards and its home dashboard,
   RabbitMQ's definitions) are mounted from files that exist.
2. Herald as the image runs it: the configuration it reads (the image's routes.toml), each
   variable it is given is one Herald reads, and the addresses it is told (the broker, the
   ledger, the SMTP server, the webhook receiver) are services of the file with the same
   users, passwords and ports. No two listeners clash in a shared network namespace (the
   metrics and the console of each Herald, the webhook receiver), and what is reached from
   outside the namespace is not on loopback, and is published.
3. The wiring between the services: Prometheus scrapes Herald's metrics address and
   RabbitMQ's metrics plugin; Grafana's datasource is the Prometheus service and the
   dashboard uses that datasource; RabbitMQ's users let Herald in with the password it is
   given, and let each publisher of routes.toml write to its exchange with the password the
   comments give.

Each problem is printed on a line of its own; the exit code is 1 when there is any.
"""

import base64
import fnmatch
import hashlib
import json
import re
import sys
import tomllib
from pathlib import Path, PurePosixPath
from urllib.parse import unquote, urlsplit

import yaml

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"

# Herald's own defaults (src/config.rs, [service]), used when routes.toml sets neither.
DEFAULT_METRICS_ADDR = "127.0.0.1:9464"
DEFAULT_CONSOLE_ADDR = "127.0.0.1:9465"
# `herald receive --addr`'s default, and what ${HERALD_RECEIVER_URL} stands for when unset.
DEFAULT_RECEIVER_URL = "http://127.0.0.1:9900"
# The shortest console password or token Herald takes (src/console/auth.rs, MIN_SECRET).
MIN_CONSOLE_SECRET = 16
CONSOLE_CREDENTIALS = (
    "HERALD_CONSOLE_OPERATOR_TOKEN",
    "HERALD_CONSOLE_READER_TOKEN",
    "HERALD_CONSOLE_OPERATOR_BASIC",
    "HERALD_CONSOLE_READER_BASIC",
)
# The profiles the file is meant to be used with: none, and the cluster's.
PROFILE_SETS = (frozenset(), frozenset({"cluster"}))

problems = []


def problem(message):
    if message not in problems:
        problems.append(message)


def profile_words(profiles):
    return "with --profile " + ",".join(sorted(profiles)) if profiles else "without a profile"


def rel(path):
    try:
        return str(Path(path).resolve().relative_to(ROOT))
    except ValueError:
        return str(path)


# ---- the compose file ---------------------------------------------------------------------


def load_yaml(path):
    with open(path, encoding="utf-8") as f:
        return yaml.safe_load(f)


def active(service, profiles):
    """Whether a service runs when the file is used with these profiles."""
    own = set(service.get("profiles") or [])
    return not own or bool(own & profiles)


def environment(service):
    env = service.get("environment") or {}
    if isinstance(env, list):
        pairs = (item.split("=", 1) for item in env)
        env = {p[0]: (p[1] if len(p) > 1 else None) for p in pairs}
    return {k: ("" if v is None else str(v)) for k, v in env.items()}


def mounts(name, service, named_volumes):
    """(host path, container path) of each bind mount; checks named volumes are declared."""
    out = []
    for volume in service.get("volumes") or []:
        if isinstance(volume, dict):
            kind, source, target = volume.get("type"), volume.get("source"), volume.get("target")
        else:
            parts = volume.split(":")
            source, target = parts[0], parts[1] if len(parts) > 1 else parts[0]
            kind = "bind" if source.startswith((".", "/", "~")) else "volume"
        if kind == "bind":
            host = (ROOT / source).resolve()
            if not host.exists():
                problem(f"{name}: mounts {source}, which does not exist")
            out.append((host, PurePosixPath(target)))
        elif kind == "volume" and source and source not in named_volumes:
            problem(f"{name}: named volume {source} is not declared under volumes:")
    return out


def host_path(service_mounts, container_path):
    """The host file behind a path inside the container, if a bind mount covers it."""
    container_path = PurePosixPath(container_path)
    for host, target in service_mounts:
        if container_path == target:
            return host
        if target in container_path.parents:
            return host / container_path.relative_to(target)
    return None


def split_addr(addr):
    """'0.0.0.0:9464' -> ('0.0.0.0', 9464); '[::1]:80' -> ('::1', 80)."""
    host, _, port = addr.rpartition(":")
    return host.strip("[]"), int(port)


def loopback(host):
    return host in ("localhost", "::1") or host.startswith("127.")


def wildcard(host):
    return host in ("", "0.0.0.0", "::")


def published_container_ports(service):
    ports = set()
    for entry in service.get("ports") or []:
        if isinstance(entry, dict):
            ports.add(int(entry["target"]))
        else:
            ports.add(int(str(entry).split("/")[0].rsplit(":", 1)[-1]))
    return ports


# ---- the image ----------------------------------------------------------------------------


def dockerfile_lines(path):
    """The Dockerfile's instructions, continuation lines joined, comments dropped."""
    lines, current = [], ""
    for raw in path.read_text(encoding="utf-8").splitlines():
        stripped = raw.strip()
        if not current and (not stripped or stripped.startswith("#")):
            continue
        if stripped.endswith("\\"):
            current += stripped[:-1] + " "
            continue
        lines.append(current + stripped)
        current = ""
    return lines


def check_image(name, service):
    """Checks the build of a service; returns (the image's ENV, COPY destination -> source)."""
    build = service.get("build")
    if build is None:
        return None
    context = build if isinstance(build, str) else build.get("context", ".")
    dockerfile = "Dockerfile" if isinstance(build, str) else build.get("dockerfile", "Dockerfile")
    context = (ROOT / context).resolve()
    if not context.is_dir():
        problem(f"{name}: build context {rel(context)} does not exist")
        return None
    path = context / dockerfile
    if not path.is_file():
        problem(f"{name}: {rel(path)} does not exist")
        return None
    ignore = context / ".dockerignore"
    ignored = []
    if ignore.is_file():
        ignored = [
            line.strip().rstrip("/")
            for line in ignore.read_text(encoding="utf-8").splitlines()
            if line.strip() and not line.startswith("#")
        ]
    env, copies = {}, {}
    for line in dockerfile_lines(path):
        word, _, rest = line.partition(" ")
        word = word.upper()
        if word == "ENV":
            for key, value in re.findall(r"(\w+)=(\"[^\"]*\"|\S+)", rest):
                env[key] = value.strip('"')
        elif word in ("COPY", "ADD"):
            args = [a for a in rest.split() if not a.startswith("--")]
            if any(a.startswith("--from") for a in rest.split()):
                continue
            *sources, destination = args
            for source in sources:
                if not (context / source).exists():
                    problem(f"{rel(path)}: {word} {source}: not in the build context")
                if any(fnmatch.fnmatch(source.rstrip("/"), p) for p in ignored):
                    problem(f"{rel(path)}: {word} {source}: excluded by .dockerignore")
                copies[PurePosixPath(destination)] = context / source
    return env, copies


# ---- Herald's configuration -----------------------------------------------------------------


def herald_variables():
    """Every HERALD_ variable Herald's source names."""
    names = set()
    for path in (ROOT / "src").rglob("*.rs"):
        names.update(re.findall(r'"(HERALD_[A-Z0-9_]+)"', path.read_text(encoding="utf-8")))
    return names


def serves(service):
    command = service.get("command")
    if command is None:
        return True
    words = command.split() if isinstance(command, str) else command
    return bool(words) and words[0] == "serve"


def command_option(service, option, default):
    command = service.get("command") or []
    words = command.split() if isinstance(command, str) else list(command)
    for i, word in enumerate(words):
        if word == option and i + 1 < len(words):
            return words[i + 1]
        if word.startswith(option + "="):
            return word.split("=", 1)[1]
    return default


def rabbit_hash_matches(password_hash, password):
    """RabbitMQ's rabbit_password_hashing_sha256: base64(salt ++ sha256(salt ++ password))."""
    raw = base64.b64decode(password_hash)
    salt, digest = raw[:4], raw[4:]
    return hashlib.sha256(salt + password.encode()).digest() == digest


# ---- the checks -----------------------------------------------------------------------------


def main():
    compose = load_yaml(COMPOSE)
    services = compose.get("services") or {}
    named_volumes = set((compose.get("volumes") or {}).keys())
    all_mounts = {name: mounts(name, svc, named_volumes) for name, svc in services.items()}
    built = {}
    images = {}
    for name, svc in services.items():
        # Several services may build the same image: check each build once.
        key = repr(svc.get("build"))
        if key not in built:
            built[key] = check_image(name, svc)
        images[name] = built[key]
    known_variables = herald_variables()

    def namespace(name):
        mode = services[name].get("network_mode", "")
        return mode.split(":", 1)[1] if mode.startswith("service:") else name

    for name, svc in services.items():
        mode = svc.get("network_mode", "")
        if mode.startswith("service:") and namespace(name) not in services:
            problem(f"{name}: network_mode names {namespace(name)}, which is not a service")
        depends = svc.get("depends_on") or {}
        for target, spec in (depends.items() if isinstance(depends, dict) else ((d, {}) for d in depends)):
            if target not in services:
                problem(f"{name}: depends on {target}, which is not a service")
                continue
            required = (spec or {}).get("required", True)
            for profiles in PROFILE_SETS:
                if active(svc, profiles) and not active(services[target], profiles) and required:
                    problem(
                        f"{name}: depends on {target}, which does not run "
                        f"{profile_words(profiles)}: add required: false"
                    )

    # Herald's services: those built from this repository (or using its image) that serve.
    herald_image = {svc.get("image") for name, svc in services.items() if svc.get("build")}
    heralds = {
        name: svc
        for name, svc in services.items()
        if (svc.get("build") or svc.get("image") in herald_image) and serves(svc)
    }
    receivers = {
        name: svc
        for name, svc in services.items()
        if (svc.get("build") or svc.get("image") in herald_image) and not serves(svc)
    }
    if not heralds:
        problem("no service runs `herald serve`")
    image = next((images[n] for n in images if images[n]), None)
    image_env, copies = image if image else ({}, {})
    config_path = copies.get(PurePosixPath(image_env.get("HERALD_CONFIG", "")))
    if config_path is None:
        problem("the Dockerfile copies no routes.toml to HERALD_CONFIG")
        config_path = ROOT / "routes.toml"
    with open(config_path, "rb") as f:
        routes = tomllib.load(f)
    service_cfg = routes.get("service", {})
    amqp_cfg = routes.get("amqp", {})
    exchange = amqp_cfg.get("exchange", "herald.events")
    secret_envs = {
        r["webhook"]["secret_env"]
        for r in routes.get("recipient", [])
        if isinstance(r.get("webhook"), dict) and "secret_env" in r["webhook"]
    }

    # What listens where, per profile set and network namespace: (host, port, who).
    listeners = {p: {} for p in PROFILE_SETS}
    metrics_of = {}

    for name, svc in {**heralds, **receivers}.items():
        env = {**image_env, **environment(svc)}
        for key in environment(svc):
            if key.startswith("HERALD_") and key not in known_variables:
                problem(f"{name}: sets {key}, which Herald does not read")
        if name in receivers:
            addr = command_option(svc, "--addr", "127.0.0.1:9900")
            if ":" not in addr:
                addr = f"127.0.0.1:{addr}"
            for p in PROFILE_SETS:
                if active(svc, p):
                    listeners[p].setdefault(namespace(name), []).append(
                        (*split_addr(addr), f"{name}'s receive --addr")
                    )
            continue

        metrics = env.get("HERALD_METRICS_ADDR") or service_cfg.get("metrics_addr", DEFAULT_METRICS_ADDR)
        console = env.get("HERALD_CONSOLE_ADDR", service_cfg.get("console_addr", DEFAULT_CONSOLE_ADDR))
        metrics_of[name] = split_addr(metrics)
        host, port = split_addr(metrics)
        if loopback(host):
            problem(
                f"{name}: metrics on {metrics}, a loopback address: Prometheus and the "
                "published port cannot reach it (set HERALD_METRICS_ADDR to 0.0.0.0:PORT)"
            )
        owner = services.get(namespace(name), {})
        if port not in published_container_ports(owner):
            problem(f"{name}: its metrics port {port} is not published (ports: of {namespace(name)})")
        found = [(host, port, f"{name}'s metrics ({metrics})")]
        if console:
            chost, cport = split_addr(console)
            found.append((chost, cport, f"{name}'s console ({console})"))
            credentials = [v for v in CONSOLE_CREDENTIALS if env.get(v)]
            if not loopback(chost) and not credentials:
                problem(
                    f"{name}: console on {console}, not loopback, with no HERALD_CONSOLE_* "
                    "credentials: herald serve refuses to start"
                )
            for var in credentials:
                secret = env[var].split(":", 1)[1] if var.endswith("_BASIC") else env[var]
                if var.endswith("_BASIC") and ":" not in env[var]:
                    problem(f"{name}: {var} is not user:password")
                elif len(secret) < MIN_CONSOLE_SECRET:
                    problem(f"{name}: {var}'s secret is shorter than {MIN_CONSOLE_SECRET} characters")
            if not loopback(chost) and cport not in published_container_ports(owner):
                problem(f"{name}: its console port {cport} is not published (ports: of {namespace(name)})")
        for p in PROFILE_SETS:
            if active(svc, p):
                listeners[p].setdefault(namespace(name), []).extend(found)

        for var in sorted(secret_envs):
            if not env.get(var):
                problem(f"{name}: routes.toml's webhooks sign with {var}, which is not set")

        # The broker's nodes, by service name, in every profile set the service runs in.
        urls = env.get("HERALD_AMQP_URLS", "").split(",") if env.get("HERALD_AMQP_URLS") else []
        urls = [u.strip() for u in urls if u.strip()] or [env.get("HERALD_AMQP_URL") or amqp_cfg.get("url", "")]
        for url in urls:
            parts = urlsplit(url)
            node = services.get(parts.hostname or "")
            if node is None:
                problem(f"{name}: the broker {parts.hostname} is not a service")
                continue
            for p in PROFILE_SETS:
                if active(svc, p) and not active(node, p):
                    problem(f"{name}: the broker {parts.hostname} does not run {profile_words(p)}")
            check_broker_login(name, parts, node, all_mounts[parts.hostname])

        ledger = env.get("HERALD_LEDGER_URL", "")
        if ledger.startswith("postgres"):
            parts = urlsplit(ledger)
            db = services.get(parts.hostname or "")
            if db is None:
                problem(f"{name}: the ledger's host {parts.hostname} is not a service")
            else:
                db_env = environment(db)
                expected = (
                    db_env.get("POSTGRES_USER", "postgres"),
                    db_env.get("POSTGRES_PASSWORD", ""),
                    db_env.get("POSTGRES_DB", db_env.get("POSTGRES_USER", "postgres")),
                )
                given = (unquote(parts.username or ""), unquote(parts.password or ""), parts.path.lstrip("/"))
                if given != expected:
                    problem(f"{name}: HERALD_LEDGER_URL's user, password or database is not {parts.hostname}'s")
                if (parts.port or 5432) != 5432:
                    problem(f"{name}: HERALD_LEDGER_URL's port is not PostgreSQL's 5432")

        smtp = env.get("HERALD_SMTP_URL", "")
        if smtp:
            parts = urlsplit(smtp)
            if loopback(parts.hostname or "") and (parts.port or 25) not in published_container_ports(owner):
                problem(
                    f"{name}: HERALD_SMTP_URL is {smtp}, but {namespace(name)}, whose network "
                    "namespace it shares, publishes no such port"
                )
            elif not loopback(parts.hostname or "") and parts.hostname not in services:
                problem(f"{name}: the SMTP server {parts.hostname} is not a service")

        receiver = urlsplit(env.get("HERALD_RECEIVER_URL") or DEFAULT_RECEIVER_URL)
        if loopback(receiver.hostname or ""):
            wanted = receiver.port or 80
            here = [
                r for r in receivers
                if namespace(r) == namespace(name)
                and split_addr(command_option(receivers[r], "--addr", "127.0.0.1:9900"))[1] == wanted
            ]
            if not here:
                problem(
                    f"{name}: the sample webhooks go to {receiver.geturl()}, where no receiver "
                    "listens in its network namespace"
                )

    for profiles, by_namespace in listeners.items():
        for ns, found in by_namespace.items():
            for i, (h1, p1, who1) in enumerate(found):
                for h2, p2, who2 in found[i + 1:]:
                    if p1 == p2 and (h1 == h2 or wildcard(h1) or wildcard(h2)):
                        problem(
                            f"{profile_words(profiles)}: {who1} and {who2} "
                            f"both take port {p1} in {ns}'s network namespace"
                        )

    check_prometheus(services, all_mounts, namespace, metrics_of)
    check_grafana(services, all_mounts)
    check_rabbitmq(services, all_mounts, routes, exchange)


def check_broker_login(name, parts, node, node_mounts):
    definitions = rabbit_definitions(parts.hostname, node_mounts)
    if definitions is None:
        return
    user, password = unquote(parts.username or "guest"), unquote(parts.password or "guest")
    found = [u for u in definitions.get("users", []) if u.get("name") == user]
    if not found:
        problem(f"{name}: logs in to {parts.hostname} as {user}, who is not in its definitions")
    elif not rabbit_hash_matches(found[0]["password_hash"], password):
        problem(f"{name}: the password it gives for {user} is not the one in {parts.hostname}'s definitions")


def rabbit_definitions(name, node_mounts):
    conf = host_path(node_mounts, "/etc/rabbitmq/rabbitmq.conf")
    if conf is None or not conf.is_file():
        return None
    match = re.search(r"^\s*load_definitions\s*=\s*(\S+)", conf.read_text(encoding="utf-8"), re.M)
    if not match:
        return None
    path = host_path(node_mounts, match.group(1))
    if path is None or not path.is_file():
        problem(f"{name}: rabbitmq.conf loads {match.group(1)}, which is not mounted")
        return None
    return json.loads(path.read_text(encoding="utf-8"))


def check_prometheus(services, all_mounts, namespace, metrics_of):
    for name, svc in services.items():
        if not str(svc.get("image", "")).startswith("prom/prometheus"):
            continue
        config_file = command_option(svc, "--config.file", "/etc/prometheus/prometheus.yml")
        config = host_path(all_mounts[name], config_file)
        if config is None or not config.is_file():
            problem(f"{name}: {config_file} is not mounted from a file")
            continue
        prom = load_yaml(config)
        base = PurePosixPath(config_file).parent
        for pattern in prom.get("rule_files") or []:
            inside = base / pattern
            host = host_path(all_mounts[name], inside)
            if host is None or not any(host.parent.glob(host.name)):
                problem(f"{rel(config)}: rule_files {pattern} ({inside}) is not mounted in {name}")
        herald_targets = []
        for job in prom.get("scrape_configs") or []:
            for static in job.get("static_configs") or []:
                for target in static.get("targets") or []:
                    host, port = split_addr(target)
                    if host not in services:
                        problem(f"{rel(config)}: job {job.get('job_name')}: {host} is not a service")
                        continue
                    if job.get("job_name") == "herald":
                        herald_targets.append(target)
                        for profiles in PROFILE_SETS:
                            if not active(svc, profiles):
                                continue
                            listening = [
                                h
                                for h, (_, p) in metrics_of.items()
                                if namespace(h) == host and p == port and active(services[h], profiles)
                            ]
                            if not listening:
                                problem(
                                    f"{rel(config)}: job herald scrapes {target}, where no "
                                    f"Herald's metrics listen {profile_words(profiles)}"
                                )
                    elif job.get("job_name") == "rabbitmq":
                        plugins = host_path(all_mounts[host], "/etc/rabbitmq/enabled_plugins")
                        if port == 15692 and (
                            plugins is None or "rabbitmq_prometheus" not in plugins.read_text(encoding="utf-8")
                        ):
                            problem(f"{rel(config)}: scrapes {target}, but {host} has no rabbitmq_prometheus plugin")
        if not herald_targets:
            problem(f"{rel(config)}: no job herald scrapes Herald")


def check_grafana(services, all_mounts):
    for name, svc in services.items():
        if not str(svc.get("image", "")).startswith("grafana/"):
            continue
        env = environment(svc)
        mounted = all_mounts[name]
        provisioning = host_path(mounted, env.get("GF_PATHS_PROVISIONING", "/etc/grafana/provisioning"))
        if provisioning is None or not provisioning.is_dir():
            problem(f"{name}: no provisioning folder is mounted")
            continue
        uids = set()
        for path in sorted((provisioning / "datasources").glob("*.y*ml")):
            for source in load_yaml(path).get("datasources") or []:
                uids.add(source.get("uid"))
                url = urlsplit(source.get("url", ""))
                if url.hostname not in services:
                    problem(f"{rel(path)}: datasource {source.get('name')}: {url.hostname} is not a service")
                elif source.get("type") == "prometheus" and (url.port or 80) != 9090:
                    problem(f"{rel(path)}: datasource {source.get('name')}: Prometheus listens on 9090")
        dashboards = []
        for path in sorted((provisioning / "dashboards").glob("*.y*ml")):
            for provider in load_yaml(path).get("providers") or []:
                inside = (provider.get("options") or {}).get("path", "")
                folder = host_path(mounted, inside)
                if folder is None or not folder.is_dir():
                    problem(f"{rel(path)}: provider {provider.get('name')}: {inside} is not mounted in {name}")
                    continue
                found = sorted(folder.glob("*.json"))
                if not found:
                    problem(f"{rel(path)}: provider {provider.get('name')}: {rel(folder)} has no dashboard")
                dashboards.extend(found)
        home = env.get("GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH")
        if home:
            path = host_path(mounted, home)
            if path is None or not path.is_file():
                problem(f"{name}: GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH {home} is not mounted")
        for path in dashboards:
            used = set()

            def walk(node):
                if isinstance(node, dict):
                    source = node.get("datasource")
                    if isinstance(source, dict) and isinstance(source.get("uid"), str):
                        used.add(source["uid"])
                    for value in node.values():
                        walk(value)
                elif isinstance(node, list):
                    for value in node:
                        walk(value)

            walk(json.loads(path.read_text(encoding="utf-8")))
            for uid in sorted(used):
                if uid.startswith("$") or uid in ("-- Grafana --", "grafana") or uid in uids:
                    continue
                problem(f"{rel(path)}: uses datasource uid {uid}, which is not provisioned")


def check_rabbitmq(services, all_mounts, routes, exchange):
    hostnames = {svc.get("hostname", name) for name, svc in services.items()}
    for name, svc in services.items():
        if not str(svc.get("image", "")).startswith("rabbitmq"):
            continue
        mounted = all_mounts[name]
        for inside in ("/etc/rabbitmq/rabbitmq.conf", "/etc/rabbitmq/enabled_plugins"):
            if host_path(mounted, inside) is None:
                problem(f"{name}: {inside} is not mounted")
        for host, target in mounted:
            if target.parent == PurePosixPath("/etc/rabbitmq/conf.d") and host.is_file():
                for node in re.findall(r"^\s*cluster_formation\.classic_config\.nodes\.\d+\s*=\s*\S+@(\S+)", host.read_text(encoding="utf-8"), re.M):
                    if node not in hostnames:
                        problem(f"{rel(host)}: lists node {node}, the hostname of no service")
        definitions = rabbit_definitions(name, mounted)
        if definitions is None:
            problem(f"{name}: loads no definitions, so has none of the publishers' logins")
            continue
        users = {u["name"]: u for u in definitions.get("users", [])}
        permissions = {p["user"]: p for p in definitions.get("permissions", [])}
        for login in routes.get("publishers", {}):
            if login not in users:
                problem(f"{name}: routes.toml's publisher {login} has no user in the definitions")
                continue
            # docker-compose.yml's comments: each publisher's password is its own name.
            if not rabbit_hash_matches(users[login]["password_hash"], login):
                problem(f"{name}: publisher {login}'s password is not {login}, as docker-compose.yml says")
            write = (permissions.get(login) or {}).get("write", "")
            if not re.fullmatch(write, exchange):
                problem(f"{name}: publisher {login} may not write to the exchange {exchange}")


if __name__ == "__main__":
    main()
    for line in problems:
        print(f"docker-compose.yml: {line}")
    if problems:
        print(f"docker-compose.yml: {len(problems)} problem(s)")
        sys.exit(1)
    print("docker-compose.yml: files, Herald's settings and the services' wiring agree")
