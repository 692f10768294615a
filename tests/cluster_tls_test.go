package tests

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/klockd/klock/tests/etcdtest"
	"github.com/klockd/klock/tests/harness"
)

// testPKI is a CA with a server certificate for 127.0.0.1 and a client
// certificate, as PEM files in a directory.
type testPKI struct {
	CA, ServerCert, ServerKey, ClientCert, ClientKey string
}

func newTestPKI(t *testing.T) testPKI {
	t.Helper()
	dir := t.TempDir()
	write := func(name, typ string, der []byte) string {
		path := filepath.Join(dir, name)
		if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
			t.Fatal(err)
		}
		return path
	}
	newKey := func() *ecdsa.PrivateKey {
		k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		return k
	}
	keyDER := func(k *ecdsa.PrivateKey) []byte {
		b, err := x509.MarshalECPrivateKey(k)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	now := time.Now()
	caKey := newKey()
	caTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "klock test CA"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	ca, err := x509.ParseCertificate(caDER)
	if err != nil {
		t.Fatal(err)
	}
	issue := func(serial int64, cn string, usage x509.ExtKeyUsage) ([]byte, *ecdsa.PrivateKey) {
		k := newKey()
		tmpl := &x509.Certificate{
			SerialNumber: big.NewInt(serial), Subject: pkix.Name{CommonName: cn},
			NotBefore: now.Add(-time.Hour), NotAfter: now.Add(time.Hour),
			KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{usage},
			IPAddresses: []net.IP{net.ParseIP("127.0.0.1")},
		}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &k.PublicKey, caKey)
		if err != nil {
			t.Fatal(err)
		}
		return der, k
	}
	srvDER, srvKey := issue(2, "etcd", x509.ExtKeyUsageServerAuth)
	cliDER, cliKey := issue(3, "klockd", x509.ExtKeyUsageClientAuth)
	return testPKI{
		CA:         write("ca.pem", "CERTIFICATE", caDER),
		ServerCert: write("server.pem", "CERTIFICATE", srvDER),
		ServerKey:  write("server-key.pem", "EC PRIVATE KEY", keyDER(srvKey)),
		ClientCert: write("client.pem", "CERTIFICATE", cliDER),
		ClientKey:  write("client-key.pem", "EC PRIVATE KEY", keyDER(cliKey)),
	}
}

// TestClusterTLS: klockd reaches an etcd that requires client certificates
// with --etcd-cacert, --etcd-cert and --etcd-key; without a client
// certificate it refuses to start, naming etcd.
func TestClusterTLS(t *testing.T) {
	if harness.ClusterMode() {
		t.Skip("cluster mode: starts its own etcd, and ran in the normal run")
	}
	pki := newTestPKI(t)
	ec := etcdtest.StartTLS(t, 1, &etcdtest.TLS{CA: pki.CA, Cert: pki.ServerCert, Key: pki.ServerKey})
	d := harness.Start(t, harness.Options{
		Cluster: &harness.ClusterOptions{Etcd: ec.EndpointList(), Prefix: "/klock/", NodeID: "tls"},
		Args:    []string{"--etcd-cacert", pki.CA, "--etcd-cert", pki.ClientCert, "--etcd-key", pki.ClientKey},
	})
	ctx := testCtx(t)
	c := d.Client(t)
	registerAgents(t, ctx, c, map[string]int64{"a": 1})
	r, err := c.AcquireLease(ctx, "a", "s", "FILE", "/tls", "MUTATES", time.Minute)
	if err != nil || !r.Success {
		t.Fatalf("AcquireLease over TLS to etcd = %+v, %v", r, err)
	}

	// Trusting the CA but presenting no certificate: etcd refuses it.
	klockd := harness.Klockd(t)
	out, err := exec.Command(klockd, "--socket", filepath.Join(t.TempDir(), "k.sock"), "--state-dir", "",
		"--etcd", ec.EndpointList(), "--node-id", "nocert", "--etcd-cacert", pki.CA).CombinedOutput()
	if err == nil || !strings.Contains(string(out), "etcd at "+ec.EndpointList()) {
		t.Errorf("klockd without a client certificate: %v\n%s\nwant a refusal naming etcd", err, out)
	}
	// Half a key pair is a usage error.
	out, err = exec.Command(klockd, "--socket", filepath.Join(t.TempDir(), "k.sock"), "--state-dir", "",
		"--etcd", ec.EndpointList(), "--etcd-cert", pki.ClientCert).CombinedOutput()
	if err == nil || !strings.Contains(string(out), "--etcd-cert and --etcd-key go together") {
		t.Errorf("klockd with --etcd-cert alone: %v\n%s", err, out)
	}
}
