"""Fixtures for multi-process tests over real DDS: each test gets its own ROS domain, its own
rclpy context and the node processes it starts (terminated at teardown)."""

import os
import signal
import subprocess
import sys
import time

import pytest


def wait_for(cond, timeout, spin=None, step=0.05):
    """Spin ``spin`` (a callable) until ``cond()`` is true or ``timeout`` s pass; return cond()."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return True
        if spin is not None:
            spin(step)
        else:
            time.sleep(step)
    return cond()


class RosGraph:
    """Processes and an in-test rclpy node on a private domain."""

    def __init__(self, tmp_path, domain):
        import rclpy
        self.rclpy = rclpy
        self.tmp = tmp_path
        self.domain = domain
        self.procs = []
        # link keys of the edge ids the tests use (nodes started by spawn() get this file)
        from fluxshard_msgs_py import auth
        self.key_file = str(tmp_path / 'link.keys')
        self.keys = auth.generate(['edge0'] + [f'robot{i}' for i in range(1, 9)])
        auth.save_keys(self.key_file, self.keys)
        self.ctx = rclpy.Context()
        rclpy.init(context=self.ctx, domain_id=domain)
        self.node = rclpy.create_node('fluxshard_test', context=self.ctx)
        from rclpy.executors import SingleThreadedExecutor
        self.executor = SingleThreadedExecutor(context=self.ctx)
        self.executor.add_node(self.node)

    def spin(self, dt=0.05):
        self.executor.spin_once(timeout_sec=dt)

    def wait_for(self, cond, timeout):
        return wait_for(cond, timeout, self.spin)

    def spawn(self, module, ns='', params=(), name=None, params_file=None):
        cmd = [sys.executable, '-m', module, '--ros-args']
        if ns:
            cmd += ['-r', f'__ns:=/{ns}']
        if params_file:
            cmd += ['--params-file', params_file]
        if module.endswith(('.edge_node', '.server_node')) and not any(
                p.startswith('security.') for p in params):
            cmd += ['-p', f'security.key_file:={self.key_file}']
        for p in params:
            cmd += ['-p', p]
        name = name or f'{module.split(".")[-1]}_{ns or "root"}_{len(self.procs)}'
        log = open(self.tmp / f'{name}.log', 'w')
        p = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=dict(os.environ))
        p.log_path = self.tmp / f'{name}.log'
        self.procs.append(p)
        return p

    def watch_diagnostics(self) -> dict:
        """Latest key/value table per status name seen on /diagnostics (updated on spin)."""
        from diagnostic_msgs.msg import DiagnosticArray
        table = {}

        def on_diag(m):
            for st in m.status:
                table[st.name] = {kv.key: kv.value for kv in st.values}
        self.node.create_subscription(DiagnosticArray, '/diagnostics', on_diag, 50)
        return table

    def signer(self, edge_id: str, role: str):
        """A signer holding ``edge_id``'s key for the topic ``role`` (the genuine edge or
        server side of a test)."""
        from fluxshard_msgs_py import auth
        return auth.Signer(self.keys[edge_id], role)

    def log(self, p):
        return p.log_path.read_text()

    def close(self):
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGINT)
        for p in self.procs:
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                p.kill()
        self.node.destroy_node()
        self.rclpy.shutdown(context=self.ctx)


# Domains 100-199, split between pytest-xdist workers (gw0, gw1, ...) so parallel tests never
# share one; FLUXSHARD_TEST_DOMAIN_BASE pins the start of a single-process run.
# FLUXSHARD_TEST_DOMAINS=A-B moves the range (a second suite beside a running one, e.g. 200-230).
_LO, _HI = (int(x) for x in os.environ.get('FLUXSHARD_TEST_DOMAINS', '100-199').split('-'))
_WORKERS = max(int(os.environ.get('PYTEST_XDIST_WORKER_COUNT', '1')), 1)
_WORKER = int(os.environ.get('PYTEST_XDIST_WORKER', 'gw0')[2:] or 0)
_SPAN = (_HI - _LO + 1) // _WORKERS
_DOMAIN = [int(os.environ.get('FLUXSHARD_TEST_DOMAIN_BASE', os.getpid())) % _SPAN]


@pytest.fixture
def ros(tmp_path, monkeypatch):
    _DOMAIN[0] = (_DOMAIN[0] + 1) % _SPAN
    domain = _LO + _WORKER * _SPAN + _DOMAIN[0]
    monkeypatch.setenv('ROS_DOMAIN_ID', str(domain))
    monkeypatch.setenv('ROS_AUTOMATIC_DISCOVERY_RANGE', 'LOCALHOST')
    if os.environ.get('FLUXSHARD_TEST_DDS') == 'builtin':  # compare: Fast DDS's LARGE_DATA
        monkeypatch.delenv('FASTDDS_DEFAULT_PROFILES_FILE', raising=False)
        monkeypatch.setenv('FASTDDS_BUILTIN_TRANSPORTS', 'LARGE_DATA')
    else:  # the shipped profile, as scripts/env.sh, fluxshard_run and the launch files use
        from fluxshard_msgs_py import dds
        monkeypatch.delenv('FASTDDS_BUILTIN_TRANSPORTS', raising=False)
        kind = 'udp' if os.environ.get('FLUXSHARD_TEST_DDS') == 'udp' else 'default'
        monkeypatch.setenv('FASTDDS_DEFAULT_PROFILES_FILE', dds.profile_path(kind))
    g = RosGraph(tmp_path, domain)
    yield g
    g.close()
