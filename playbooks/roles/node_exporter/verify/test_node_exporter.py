"""testinfra checks of the node_exporter role."""

from __future__ import annotations

# bash's /dev/tcp: hosts have no curl, and the check must not depend on one.
GET = ("exec 3<>/dev/tcp/127.0.0.1/{port}; "
       "printf 'GET {path} HTTP/1.0\\r\\nHost: localhost\\r\\n\\r\\n' >&3; cat <&3")


def port(role_vars: dict) -> int:
    return int(role_vars["node_exporter_listen_address"].rsplit(":", 1)[1])


def test_installed_enabled_running(host):
    assert host.package("prometheus-node-exporter").is_installed
    service = host.service("prometheus-node-exporter")
    assert service.is_enabled and service.is_running


def test_flags_file(host, role_vars):
    defaults = host.file("/etc/default/prometheus-node-exporter")
    assert defaults.user == "root" and defaults.mode == 0o644
    assert f"--web.listen-address={role_vars['node_exporter_listen_address']}" in \
        defaults.content_string


def test_systemd_collector_only_when_asked(host, role_vars):
    """Debian's exporter runs its systemd collector unless told not to; the role tells it."""
    asked = bool(role_vars.get("node_exporter_systemd_collector")) or \
        "--collector.systemd" in str(role_vars.get("node_exporter_args", "")).split()
    out = host.check_output("bash -c %s", GET.format(port=port(role_vars), path="/metrics"))
    ran = 'node_scrape_collector_success{collector="systemd"}' in out
    assert ran == asked, f"systemd collector ran: {ran}, asked: {asked}"


def test_listening(host, role_vars):
    assert host.socket(f"tcp://{port(role_vars)}").is_listening


def test_metrics_answer(host, role_vars):
    out = host.check_output("bash -c %s", GET.format(port=port(role_vars), path="/metrics"))
    assert out.startswith("HTTP/1.0 200") or out.startswith("HTTP/1.1 200")
    assert "node_exporter_build_info" in out


def test_failed_units_are_pushed(host, role_vars):
    """The event companion when the site has an event key (metalchain sets the URL then);
    without one, no OnFailure= drop-in points at a reporter that cannot report."""
    if not role_vars.get("metalchain_event_url"):
        assert not host.file("/etc/systemd/system/service.d/10-metalchain-event.conf").exists
        return
    token = host.file("/etc/metalchain/event.token")
    assert token.user == "root" and token.mode == 0o600 and token.size > 0
    assert host.file("/usr/local/lib/metalchain/metalchain-push-event").mode == 0o755
    out = host.check_output("systemctl show -P OnFailure systemd-journald.service; "
                            "echo \"[$(systemctl show -P OnFailure "
                            "metalchain-event@x.service.service)]\"")
    assert out.split() == ["metalchain-event@systemd-journald.service.service", "[]"]
