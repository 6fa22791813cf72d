package gantry

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/pem"
	"math/big"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	gantryv1 "github.com/gantry/gantry/clients/go/gen/gantry/v1"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// issue signs a certificate for template with parent's key (self-signed
// when parent is nil) and writes it and its key as PEM to dir/name.{crt,key}.
func issue(t *testing.T, dir, name string, template *x509.Certificate, parent *x509.Certificate, parentKey *ecdsa.PrivateKey) (*x509.Certificate, *ecdsa.PrivateKey) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	template.SerialNumber = big.NewInt(time.Now().UnixNano())
	template.NotBefore = time.Now().Add(-time.Hour)
	template.NotAfter = time.Now().Add(24 * time.Hour)
	if parent == nil {
		parent, parentKey = template, key
	}
	der, err := x509.CreateCertificate(rand.Reader, template, parent, &key.PublicKey, parentKey)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	write := func(file, kind string, bytes []byte) {
		if err := os.WriteFile(filepath.Join(dir, file), pem.EncodeToMemory(&pem.Block{Type: kind, Bytes: bytes}), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write(name+".crt", "CERTIFICATE", der)
	write(name+".key", "EC PRIVATE KEY", keyDER)
	return cert, key
}

// TestMutualTLSWithAToken: the client reaches a gantry that requires a
// client certificate and a token, and gets gantry's statuses for what its
// grant does not cover.
func TestMutualTLSWithAToken(t *testing.T) {
	dir := t.TempDir()
	ca, caKey := issue(t, dir, "ca", &x509.Certificate{
		Subject: pkix.Name{CommonName: "go suite CA"}, IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageCertSign,
	}, nil, nil)
	issue(t, dir, "server", &x509.Certificate{
		Subject: pkix.Name{CommonName: "gantry"}, DNSNames: []string{"localhost"},
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1")},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}, ca, caKey)
	spiffe, _ := url.Parse("spiffe://test/go-suite")
	issue(t, dir, "client", &x509.Certificate{
		Subject: pkix.Name{CommonName: "go-suite"}, URIs: []*url.URL{spiffe},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}, ca, caKey)

	token := "go-suite-token-5d2c"
	sum := sha256.Sum256([]byte(token))
	files := map[string]string{
		"tokens.toml": "[[token]]\nidentity = \"go-suite\"\nsha256 = \"" + hex.EncodeToString(sum[:]) + "\"\n",
		"policy.toml": "[[grant]]\nidentities = [\"go-suite\"]\nratelimit = [\"tight\"]\ncache = [\"go\"]\n",
	}
	for name, text := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(text), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	path := func(name string) string { return filepath.Join(dir, name) }
	addr := startGantryWith(t, "127.0.0.1:0", []string{
		"GANTRY_SERVER_TLS_CERT_FILE=" + path("server.crt"),
		"GANTRY_SERVER_TLS_KEY_FILE=" + path("server.key"),
		"GANTRY_SERVER_TLS_CLIENT_CA_FILE=" + path("ca.crt"),
		"GANTRY_AUTH_TOKENS_FILE=" + path("tokens.toml"),
		"GANTRY_AUTH_POLICY_FILE=" + path("policy.toml"),
	})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()

	c, err := New(addr, WithTLS(path("ca.crt"), path("client.crt"), path("client.key")), WithToken(token), WithRetries(0))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	got, err := c.RateLimiter.Acquire(ctx, &gantryv1.AcquireRequest{Limit: "tight", Key: "k", Tokens: 1})
	if err != nil || !got.GetAllowed() {
		t.Fatalf("Acquire over mutual TLS: %v %v", got, err)
	}
	if _, err := c.Cache.Put(ctx, &gantryv1.PutRequest{Namespace: "go", Key: "k", Value: []byte("v")}); err != nil {
		t.Fatalf("Put in the granted namespace: %v", err)
	}
	_, err = c.Cache.Get(ctx, &gantryv1.GetRequest{Namespace: "other", Key: "k"})
	if status.Code(err) != codes.PermissionDenied || !strings.Contains(err.Error(), `"other"`) {
		t.Fatalf("Get outside the grant: %v", err)
	}

	// The certificate alone names an identity the policy grants nothing.
	noToken, err := New(addr, WithTLS(path("ca.crt"), path("client.crt"), path("client.key")), WithRetries(0))
	if err != nil {
		t.Fatal(err)
	}
	defer noToken.Close()
	_, err = noToken.Cache.Get(ctx, &gantryv1.GetRequest{Namespace: "go", Key: "k"})
	if status.Code(err) != codes.PermissionDenied {
		t.Fatalf("certificate without a grant: %v", err)
	}

	// Without a client certificate the handshake is refused.
	noCert, err := New(addr, WithTLS(path("ca.crt"), "", ""), WithToken(token), WithRetries(0))
	if err != nil {
		t.Fatal(err)
	}
	defer noCert.Close()
	if _, err := noCert.Cache.Get(ctx, &gantryv1.GetRequest{Namespace: "go", Key: "k"}); status.Code(err) != codes.Unavailable {
		t.Fatalf("no client certificate: %v", err)
	}

	if _, err := New(addr, WithToken(token)); err == nil {
		t.Fatal("a token without TLS was accepted")
	}
}
