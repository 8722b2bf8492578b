"""The mirror's probes as pure parsers: apt-cache depends -> closure, --print-uris, Packages."""

from __future__ import annotations

import pytest

from configure.mirror import (
    MirrorError,
    check_package_names,
    dependency_closure,
    parse_depends,
    parse_packages_index,
    parse_print_uris,
)
from inventory.errors import InputError

pytestmark = pytest.mark.unit

# An excerpt of real `apt-cache depends --recurse --no-recommends ... prometheus-node-exporter`
# output on Debian 12: alternatives (|Depends), virtual packages with providers (<debconf-2.0>),
# a Multi-Arch qualifier (<perl:any>), virtual names listed at the end.
NODE_EXPORTER = """\
prometheus-node-exporter
  PreDepends: init-system-helpers
  Depends: adduser
  Depends: libc6
init-system-helpers
 |Depends: usrmerge
  Depends: usr-is-merged
    usrmerge
adduser
  Depends: passwd
libc6
  Depends: libgcc-s1
usrmerge
  Depends: <perl:any>
    perl
usr-is-merged
passwd
 |Depends: debconf
  Depends: <debconf-2.0>
    cdebconf
    debconf
libgcc-s1
  Depends: libc6
perl
  PreDepends: dpkg
dpkg
debconf
cdebconf
<perl:any>
<debconf-2.0>
"""

CASES = [
    # (id, apt-cache depends text, roots, expected closure)
    ("node-exporter", NODE_EXPORTER, ["prometheus-node-exporter"],
     ["adduser", "cdebconf", "debconf", "dpkg", "init-system-helpers", "libc6", "libgcc-s1",
      "passwd", "perl", "prometheus-node-exporter", "usr-is-merged", "usrmerge"]),
    ("leaf", "a\n", ["a"], ["a"]),
    ("cycle", "a\n  Depends: b\nb\n  Depends: a\n", ["a"], ["a", "b"]),
    ("advice-ignored", "a\n  Recommends: b\n  Suggests: c\n  Breaks: d\nb\nc\nd\n", ["a"],
     ["a"]),
    ("alternative-with-unknown-first", "a\n |Depends: <gone>\n  Depends: b\nb\n<gone>\n",
     ["a"], ["a", "b"]),
    ("virtual-provider-only", "a\n  Depends: <mta>\n    exim\n    postfix\nexim\npostfix\n<mta>\n",
     ["a"], ["a", "exim", "postfix"]),
    ("two-roots", "a\nb\n  Depends: c\nc\n", ["a", "b"], ["a", "b", "c"]),
    ("arch-qualified-real", "a\n  Depends: libx:amd64\nlibx:amd64\n", ["a"], ["a", "libx"]),
    ("virtual-before-real", "<perl:any>\nperl\na\n  Depends: <perl:any>\n    perl\n", ["a"],
     ["a", "perl"]),
]


@pytest.mark.parametrize(("text", "roots", "want"), [c[1:] for c in CASES],
                         ids=[c[0] for c in CASES])
def test_closure(text, roots, want):
    assert dependency_closure(parse_depends(text), roots) == want


def test_parse_groups_and_providers():
    g = parse_depends(NODE_EXPORTER)
    groups = g["passwd"].groups
    assert len(groups) == 1
    (debconf, virtual) = groups[0]
    assert (debconf.name, debconf.virtual) == ("debconf", False)
    assert (virtual.name, virtual.virtual, virtual.providers) == (
        "debconf-2.0", True, ("cdebconf", "debconf"))
    assert g["perl:any"].virtual and not g["perl"].virtual
    assert [[d.name for d in grp] for grp in g["prometheus-node-exporter"].groups] == [
        ["init-system-helpers"], ["adduser"], ["libc6"]]


def test_unknown_root_is_input_error():
    with pytest.raises(InputError, match=r"unknown package.*nosuch"):
        dependency_closure(parse_depends("a\n"), ["a", "nosuch"])


def test_virtual_root_is_input_error():
    with pytest.raises(InputError, match="virtual"):
        dependency_closure(parse_depends("<debconf-2.0>\n"), ["debconf-2.0"])


def test_unsatisfiable_dependency_names_it():
    with pytest.raises(MirrorError, match=r"a depends on <?ghost"):
        dependency_closure(parse_depends("a\n  Depends: <ghost>\n<ghost>\n"), ["a"])


def test_print_uris():
    text = ("'http://deb.debian.org/debian/pool/main/a/adduser/adduser_3.134_all.deb' "
            "adduser_3.134_all.deb 183272 SHA256:C24FE4EB\n"
            "'http://deb.debian.org/debian/pool/main/g/gmp/libgmp10_2%3a6.2.1-1_amd64.deb' "
            "libgmp10_2%3a6.2.1-1_amd64.deb 10 SHA256:ab\n"
            "W: some warning\n")
    a, g = parse_print_uris(text)
    assert (a.package, a.filename, a.size, a.sha256) == (
        "adduser", "adduser_3.134_all.deb", 183272, "c24fe4eb")
    # The epoch is dropped from the mirror's file name (a "%" in a URL is an escape).
    assert (g.package, g.filename, g.download_name) == (
        "libgmp10", "libgmp10_6.2.1-1_amd64.deb", "libgmp10_2%3a6.2.1-1_amd64.deb")


@pytest.mark.parametrize("line", [
    "'http://x/a.deb' a.deb 10 MD5Sum:abc",
    "'http://x/a.deb' ../a.deb 10 SHA256:ab",
    "'http://x/a.deb' a.tar 10 SHA256:ab",
])
def test_print_uris_refuses_odd_lines(line):
    with pytest.raises(MirrorError):
        parse_print_uris(line)


def test_packages_index():
    text = ("Package: b\nVersion: 1:2.0\nArchitecture: amd64\nFilename: ./b_2.0_amd64.deb\n"
            "Size: 5\nSHA256: bb\nDescription: two\n lines\n\n"
            "Package: a\nVersion: 1.0\nArchitecture: all\nFilename: ./a_1.0_all.deb\n"
            "Size: 3\nSHA256: aa\n")
    a, b = parse_packages_index(text)
    assert (a.package, a.version, a.architecture, a.filename, a.sha256, a.size) == (
        "a", "1.0", "all", "a_1.0_all.deb", "aa", 3)
    assert (b.package, b.version) == ("b", "1:2.0")
    assert parse_packages_index("") == []
    with pytest.raises(MirrorError, match="SHA256"):
        parse_packages_index("Package: a\nVersion: 1\nArchitecture: all\nFilename: a\nSize: 1\n")


def test_package_names():
    assert check_package_names([" curl", "curl", "prometheus-node-exporter", ""]) == [
        "curl", "prometheus-node-exporter"]
    for bad in (["Curl"], ["a b"], ["-o"], ["x;rm"], [], [""]):
        with pytest.raises(InputError):
            check_package_names(bad)
