"""The pure parts of bench/peers.py: the workloads written once as data, their generation
as a metalchain role, an Ansible playbook and a pyinfra deploy, the parsing of each tool's
output and of the hosts' sshd journals, and the ratio table. No processes, no I/O beyond
returning text: unit-tested in tests/unit/test_peerkit.py."""
