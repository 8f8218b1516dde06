"""A throw-away OpenLDAP slapd on a free loopback port, with people and groups, for the LDAP tests."""

import datetime
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time

from twisted.trial.unittest import SkipTest

from tests.support import free_port

SUFFIX = "dc=example,dc=com"
ADMIN_DN = f"cn=admin,{SUFFIX}"
ADMIN_PASSWORD = "adminsecret"
SCHEMAS = ("core", "cosine", "inetorgperson", "nis")

FIXTURE = """
dn: {suffix}
objectClass: dcObject
objectClass: organization
o: Example
dc: example

dn: ou=people,{suffix}
objectClass: organizationalUnit
ou: people

dn: ou=groups,{suffix}
objectClass: organizationalUnit
ou: groups

dn: uid=dana,ou=people,{suffix}
objectClass: inetOrgPerson
uid: dana
cn: Dana Scully
sn: Scully
mail: dana@example.com
userPassword: {dana_password}

dn: uid=erin,ou=people,{suffix}
objectClass: inetOrgPerson
uid: erin
cn: Erin Example
sn: Example
mail: erin@example.com
userPassword: {erin_password}

dn: cn=sales,ou=groups,{suffix}
objectClass: groupOfNames
cn: sales
member: uid=dana,ou=people,{suffix}

dn: cn=engineering,ou=groups,{suffix}
objectClass: groupOfNames
cn: engineering
member: uid=erin,ou=people,{suffix}
member: uid=dana,ou=people,{suffix}

dn: cn=ops,ou=groups,{suffix}
objectClass: posixGroup
cn: ops
gidNumber: 5001
memberUid: erin
"""


def make_certificate(directory, host="127.0.0.1"):
    """A CA and a server certificate for ``host``; returns (ca_file, cert_file, key_file)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID
    import ipaddress

    now = datetime.datetime.now(datetime.timezone.utc)

    def name(text):
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, text)])

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder().subject_name(name("gateway test CA")).issuer_name(name("gateway test CA"))
        .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1)).not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder().subject_name(name(host)).issuer_name(ca.subject)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1)).not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(host)), x509.DNSName("localhost")]),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    paths = tuple(os.path.join(directory, n) for n in ("ca.pem", "server.pem", "server.key"))
    with open(paths[0], "wb") as f:
        f.write(ca.public_bytes(serialization.Encoding.PEM))
    with open(paths[1], "wb") as f:
        f.write(cert.public_bytes(serialization.Encoding.PEM))
    with open(paths[2], "wb") as f:
        f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                                  serialization.NoEncryption()))
    return paths


class Slapd:
    """slapd with the fixture above (dana and erin, password "secret"; groupOfNames sales and engineering, posixGroup ops)."""

    def __init__(self, tls=False, memberof=False):
        for program in ("slapd", "slapadd", "slappasswd"):
            if shutil.which(program) is None and not os.path.exists(f"/usr/sbin/{program}"):
                raise SkipTest(f"{program} is not installed (Debian package slapd)")
        self.dir = tempfile.mkdtemp(prefix="gw-slapd-")
        os.makedirs(os.path.join(self.dir, "data"))
        self.port = free_port()
        self.url = f"ldap://127.0.0.1:{self.port}"
        self.process = None
        lines = [f"include /etc/ldap/schema/{name}.schema" for name in SCHEMAS]
        lines += [
            "modulepath /usr/lib/ldap",
            "moduleload back_mdb",
            *(["moduleload memberof"] if memberof else []),
            f"pidfile {self.dir}/slapd.pid",
        ]
        if tls:
            self.ca_file, cert, key = make_certificate(self.dir)
            lines += [f"TLSCertificateFile {cert}", f"TLSCertificateKeyFile {key}", f"TLSCACertificateFile {self.ca_file}"]
        lines += [
            "database mdb",
            f'suffix "{SUFFIX}"',
            f'rootdn "{ADMIN_DN}"',
            f"rootpw {ADMIN_PASSWORD}",
            f"directory {self.dir}/data",
            # memberOf on people, kept by slapd as groupOfNames change (not for what slapadd loads).
            *(["overlay memberof"] if memberof else []),
            "access to attrs=userPassword by anonymous auth by * none",
            "access to * by * read",
        ]
        self.config = os.path.join(self.dir, "slapd.conf")
        with open(self.config, "w") as f:
            f.write("\n".join(lines) + "\n")
        ldif = os.path.join(self.dir, "fixture.ldif")
        with open(ldif, "w") as f:
            f.write(FIXTURE.format(suffix=SUFFIX, dana_password=self._hash("secret"), erin_password=self._hash("secret")))
        subprocess.run(["slapadd", "-f", self.config, "-l", ldif], check=True, capture_output=True, timeout=60)

    def _hash(self, password):
        return subprocess.run(["slappasswd", "-s", password], check=True, capture_output=True, text=True).stdout.strip()

    def start(self):
        self.process = subprocess.Popen(
            ["slapd", "-f", self.config, "-h", f"ldap://127.0.0.1:{self.port}/", "-d", "0"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                if self.process.poll() is not None:
                    raise RuntimeError(f"slapd exited with {self.process.returncode}")
                time.sleep(0.05)
        raise RuntimeError("slapd did not start listening")

    def directory_config(self, handles, *, ttl=None, starttls=False, extra="", ldap_extra=""):
        """
        The ``[directory]`` and ``[directory.ldap]`` TOML of a gateway that
        uses this slapd as its administrator; ``handles`` is the TOML inline
        table body, e.g. ``'xmpp = "mail"'``; ``extra`` and ``ldap_extra``:
        more lines for each table.
        """
        return "\n".join([
            "[directory]",
            'backend = "ldap"',
            *([f"cache_ttl = {ttl}"] if ttl is not None else []),
            extra,
            "",
            "[directory.ldap]",
            f'url = "{self.url}"',
            f"starttls = {'true' if starttls else 'false'}",
            f'ca_file = "{getattr(self, "ca_file", "")}"',
            f'bind_dn = "{ADMIN_DN}"',
            f'bind_password = "{ADMIN_PASSWORD}"',
            f'people_base = "ou=people,{SUFFIX}"',
            f'groups_base = "ou=groups,{SUFFIX}"',
            f"handles = {{ {handles} }}",
            ldap_extra,
            "",
        ])

    def _admin(self, tool, *args, input=None):
        """Run an ldap-utils ``tool`` against the running slapd as its administrator."""
        program = shutil.which(tool)
        if program is None:
            raise SkipTest(f"{tool} is not installed (Debian package ldap-utils)")
        subprocess.run(
            [program, "-x", "-H", self.url, "-D", ADMIN_DN, "-w", ADMIN_PASSWORD, *args],
            input=input, text=True, check=True, capture_output=True, timeout=30,
        )

    def add(self, ldif):
        """Add entries to the running slapd through the protocol, as an administrator would (ldapadd)."""
        self._admin("ldapadd", input=ldif.format(suffix=SUFFIX))

    def set_password(self, uid, password):
        """Change a person's password in the running slapd, as an administrator would (ldappasswd)."""
        self._admin("ldappasswd", "-s", password, f"uid={uid},ou=people,{SUFFIX}")

    def stop(self):
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def destroy(self):
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)
