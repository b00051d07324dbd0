"""Discovery without multicast: every process a client of two Fast DDS Discovery Servers,
through one profile that also carries the large-image transports; robots and servers in two
network namespaces joined by a link without multicast find each other, and the fleet keeps
serving when one discovery server stops."""

import json
import os
import subprocess
import sys
import xml.etree.ElementTree as ET

import pytest

from fluxshard_msgs_py import dds

NS = '{http://www.eprosima.com}'


def test_server_lists_are_parsed_or_refused_with_the_item_named():
    assert dds.parse_servers('10.0.0.2:11811; 10.0.0.3') == [
        ('10.0.0.2', 11811), ('10.0.0.3', 11811)]
    for bad, words in (('gpu-host:11811', 'not an IPv4 address'), ('10.0.0.2:0', 'port'),
                       ('10.0.0.2:x', 'port'), (' , ', 'no discovery server')):
        with pytest.raises(ValueError, match=words):
            dds.parse_servers(bad)


@pytest.mark.parametrize('kind', ['default', 'udp'])
def test_the_client_profile_keeps_the_transports_and_lists_both_servers(tmp_path, kind):
    path = dds.write_discovery_profile('10.0.0.2,10.0.0.3:11812', tmp_path / 'p.xml', kind)
    root, shipped = ET.parse(path).getroot(), ET.parse(dds.profile_path(kind)).getroot()
    # the same transports as the shipped profile: large images still arrive whole
    assert ET.tostring(root.find(f'.//{NS}transport_descriptors')) == ET.tostring(
        shipped.find(f'.//{NS}transport_descriptors'))
    part = root.find(f'.//{NS}participant')
    assert part.get('is_default_profile') == 'true'
    cfg = part.find(f'{NS}rtps/{NS}builtin/{NS}discovery_config')
    assert cfg.find(f'{NS}discoveryProtocol').text == 'CLIENT'
    locs = [(u.find(f'{NS}address').text, u.find(f'{NS}port').text)
            for u in cfg.iter(f'{NS}udpv4')]
    assert locs == [('10.0.0.2', '11811'), ('10.0.0.3', '11812')]


def test_launch_files_get_the_client_profile_only_when_servers_are_named():
    shipped = dds.profile_path()
    assert dds.launch_profile(shipped, '') == shipped
    path = dds.launch_profile(shipped, '10.0.0.2:11811,10.0.0.3:11811')
    assert path != shipped and 'CLIENT' in open(path).read()
    assert dds.launch_profile(shipped, '10.0.0.2:11811,10.0.0.3:11811') == path  # reused
    with pytest.raises(ValueError, match='not an IPv4'):
        dds.launch_profile(shipped, 'gpu-host')


def test_the_command_line_writes_profiles_and_refuses_bad_addresses(tmp_path):
    def run(*args):
        return subprocess.run([sys.executable, '-m', 'fluxshard_msgs_py.dds', *args],
                              capture_output=True, text=True, timeout=60)
    out = run('profile', '10.0.0.2', '--kind', 'udp', '-o', str(tmp_path / 'c.xml'))
    assert out.returncode == 0 and 'CLIENT' in (tmp_path / 'c.xml').read_text(), out.stderr
    assert 'fluxshard_shm' not in (tmp_path / 'c.xml').read_text()  # network only
    bad = run('server', 'gpu-host:11811')
    assert bad.returncode == 2 and 'not an IPv4 address' in bad.stderr, bad


@pytest.mark.parametrize('args, words', [
    (['--discovery-servers', 'gpu-host'], 'not an IPv4 address'),
    (['--discovery-servers', '10.0.0.2', '--stop-discovery-at', '5'],
     'needs --discovery-servers auto'),
    (['--stop-discovery-at', '5'], 'needs --discovery-servers auto')])
def test_the_runner_refuses_bad_discovery_options(tmp_path, args, words):
    out = subprocess.run([sys.executable, '-m', 'fluxshard_eval.runner', *args],
                         env=dict(os.environ, FLUXSHARD_LOG_DIR=str(tmp_path)),
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and words in out.stderr, out.stderr[-2000:]


def test_the_discovery_server_tool_is_installed():
    argv, env = dds.discovery_server_command('127.0.0.1', 11811)
    assert not any(k in env for k in dds.CHOSEN_BY)
    out = subprocess.run([argv[0], argv[1], '-v'], env=env,
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0 and 'Fast DDS' in out.stdout + out.stderr, out


PAIR = r"""
import sys, time, rclpy
from std_msgs.msg import String
rclpy.init()
n = rclpy.create_node(sys.argv[1])
got = []
if sys.argv[1] == 'talker':
    pub = n.create_publisher(String, '/chat', 10)
else:
    n.create_subscription(String, '/chat', got.append, 10)
end = time.monotonic() + float(sys.argv[2])
while time.monotonic() < end and len(got) < 3:
    if sys.argv[1] == 'talker':
        pub.publish(String(data='hi'))
    rclpy.spin_once(n, timeout_sec=0.1)
print('received', len(got))
"""


def _talk(profile, seconds):
    """A talker and a listener process (UDP only) on the client profile: how many messages
    the listener got (3 = they found each other)."""
    env = dict(os.environ, FASTDDS_DEFAULT_PROFILES_FILE=profile,
               ROS_DOMAIN_ID=str(80 + os.getpid() % 20))
    for k in ('FASTDDS_BUILTIN_TRANSPORTS', 'ROS_AUTOMATIC_DISCOVERY_RANGE'):
        env.pop(k, None)
    talker = subprocess.Popen([sys.executable, '-c', PAIR, 'talker', str(seconds + 5)],
                              env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        out = subprocess.run([sys.executable, '-c', PAIR, 'listener', str(seconds)], env=env,
                             capture_output=True, text=True, timeout=seconds + 60)
    finally:
        talker.kill()
        talker.wait(10)
    assert out.returncode == 0, out.stderr[-2000:]
    return int(out.stdout.split()[-1])


def test_clients_find_each_other_only_through_a_discovery_server(tmp_path):
    port = 12811 + os.getpid() % 1000
    profile = dds.write_discovery_profile(f'127.0.0.1:{port}', tmp_path / 'c.xml', 'udp')
    # no discovery server: no multicast fallback, so nobody is found
    assert _talk(profile, 6.0) == 0
    argv, env = dds.discovery_server_command('127.0.0.1', port)
    server = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)
    try:
        assert 'Server started' in server.stdout.readline() + server.stdout.readline()
        assert _talk(profile, 30.0) == 3
    finally:
        server.terminate()
        server.wait(10)


def test_robots_and_servers_in_two_namespaces_find_each_other_through_discovery_servers(
        tmp_path):
    from fluxshard_eval import netns
    if netns.available():
        pytest.skip(f'no network namespaces here: {netns.available()}')
    out = tmp_path / 'run.json'
    env = dict(os.environ, FLUXSHARD_LOG_DIR=str(tmp_path / 'log'),
               ROS_DOMAIN_ID=str(60 + os.getpid() % 20))
    cmd = [sys.executable, '-m', 'fluxshard_eval.runner', '--robots', '2', '--servers', '2',
           '--netns', '100', '--discovery-servers', 'auto', '--stop-discovery-at', '5',
           '--duration', '14', '--rate', '2', '--quiet', '--json', str(out),
           '--server-param', 'model.backend:=onnxruntime', '--server-param',
           'model.threads:=1', '--edge-param', 'model.backend:=onnxruntime',
           '--edge-param', 'scheduler.force_strategy:=cloud']
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=400)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    s = json.loads(out.read_text())
    d = s['discovery']
    # one discovery server in each namespace; the servers' one was stopped mid-run
    assert d['servers'] == ['10.231.0.2:11811', '10.231.0.1:11811'], d
    assert d['stopped'] == '10.231.0.2:11811'
    assert 'multicast discovery off' in p.stdout
    for r, v in s['robots'].items():
        assert v['unaccounted'] == 0 and v['stamps_unique'], (r, v)
        # still served by a server after the stop: the fleet carries on
        assert d['served_after_stop'][r] >= 3, d
    log = (tmp_path / 'log' / 'discovery2.log').read_text()
    assert 'UDPv4:[10.231.0.1]:11811' in log, log
