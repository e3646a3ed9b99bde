// Package plaitdeploy runs Complement against Plait processes on this machine
// instead of Docker containers. It implements complement.Deployment and is
// handed to complement.TestMain through complement.WithDeployment by the
// main_test.go files that run.sh overlays onto the upstream test packages.
//
// Every homeserver (hs1, hs2, ...) is its own Plait process with:
//   - a fresh temporary database directory,
//   - a client API listener on a free loopback port (plain HTTP),
//   - a federation listener on another free loopback port (TLS, with a
//     certificate for its server name signed by Complement's per-run CA),
//   - the CA as the trust root for its outgoing federation requests.
//
// Configuration comes from environment variables (see README.md):
//
//	PLAIT_BIN                     the plait binary (run.sh always sets it)
//	PLAIT_COMPLEMENT_SERVER_NAMES "hs" (default): server names are hs1, hs2, ...
//	                              as with Complement's Docker deployer; Plait
//	                              learns where hsN listens from PLAIT_FEDERATION_HOSTS.
//	                              "ip": server names are 127.0.0.1:<federation port>,
//	                              which need no resolution override at all.
//	PLAIT_COMPLEMENT_WORKDIR      parent directory for per-server temp dirs
//	PLAIT_COMPLEMENT_KEEP_DATA    "1" keeps the temp dirs of failed tests
//	PLAIT_COMPLEMENT_LOG_LINES    how many lines of server output to print on
//	                              failure (default 400, 0 = all)
package plaitdeploy

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/matrix-org/complement"
	"github.com/matrix-org/complement/client"
	"github.com/matrix-org/complement/config"
	"github.com/matrix-org/complement/ct"
	"github.com/matrix-org/complement/helpers"
	"github.com/matrix-org/gomatrixserverlib/spec"
)

const loopback = "127.0.0.1"

// registry of every process this package started, so that Cleanup (called
// once per test package) can kill whatever a test forgot to Destroy.
var (
	liveMu    sync.Mutex
	live      = map[*server]struct{}{}
	deployNum atomic.Int64
)

// Deploy is the complement.WithDeployment callback.
func Deploy(t ct.TestLike, numServers int, cfg *config.Complement) complement.Deployment {
	t.Helper()
	if numServers < 1 {
		ct.Fatalf(t, "plaitdeploy: asked for %d servers", numServers)
	}
	bin, err := plaitBinary()
	if err != nil {
		ct.Fatalf(t, "plaitdeploy: %s", err)
	}
	parent := os.Getenv("PLAIT_COMPLEMENT_WORKDIR")
	if parent != "" {
		if err := os.MkdirAll(parent, 0o755); err != nil {
			ct.Fatalf(t, "plaitdeploy: %s", err)
		}
	}
	dir, err := os.MkdirTemp(parent, fmt.Sprintf("plait-%s-%d-", sanitize(cfg.PackageNamespace), deployNum.Add(1)))
	if err != nil {
		ct.Fatalf(t, "plaitdeploy: temp dir: %s", err)
	}
	caPEM, err := cfg.CACertificateBytes()
	if err != nil {
		ct.Fatalf(t, "plaitdeploy: CA cert: %s", err)
	}
	caFile := filepath.Join(dir, "ca.crt")
	if err := os.WriteFile(caFile, caPEM, 0o644); err != nil {
		ct.Fatalf(t, "plaitdeploy: %s", err)
	}
	caPool := x509.NewCertPool()
	caPool.AddCert(cfg.CACertificate)

	d := &Deployment{
		cfg:     cfg,
		dir:     dir,
		caPool:  caPool,
		servers: map[string]*server{},
		ipNames: os.Getenv("PLAIT_COMPLEMENT_SERVER_NAMES") == "ip",
	}
	for i := 1; i <= numServers; i++ {
		hsName := fmt.Sprintf("hs%d", i)
		s := &server{
			hsName: hsName,
			bin:    bin,
			dir:    filepath.Join(dir, hsName),
			caFile: caFile,
			cfg:    cfg,
		}
		d.servers[hsName] = s
		d.order = append(d.order, hsName)
	}
	// Ports, names and certificates first: every server must know where all
	// the others are before any of them starts.
	for _, hsName := range d.order {
		s := d.servers[hsName]
		if err := s.allocate(d.ipNames); err != nil {
			d.teardown(t, true)
			ct.Fatalf(t, "plaitdeploy: %s: %s", hsName, err)
		}
	}
	hosts := d.hostsEnv()
	for _, hsName := range d.order {
		d.servers[hsName].hostsEnv = hosts
	}
	// Start them concurrently: with several servers this halves start-up time.
	var wg sync.WaitGroup
	errs := make([]error, len(d.order))
	for i, hsName := range d.order {
		wg.Add(1)
		go func(i int, s *server) {
			defer wg.Done()
			errs[i] = s.startWithPortRetry(d.ipNames, d.rehost)
		}(i, d.servers[hsName])
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		d.teardown(t, true)
		ct.Fatalf(t, "plaitdeploy: starting Plait failed: %s", err)
	}
	for _, hsName := range d.order {
		s := d.servers[hsName]
		t.Logf("plaitdeploy: %s is %s (pid %d): client %s, federation https://%s:%d, data %s",
			hsName, s.serverName, s.pid(), s.baseURL(), loopback, s.fedPort, s.dir)
	}
	// Safety net for tests that forget `defer deployment.Destroy(t)`, and the
	// per-test timeout: a hung server is killed so the test's requests fail
	// fast instead of stalling the whole package until go test's -timeout.
	if c, ok := t.(interface{ Cleanup(func()) }); ok {
		limit := perTestTimeout()
		var mu sync.Mutex
		finished := false
		timer := time.AfterFunc(limit, func() {
			mu.Lock()
			defer mu.Unlock()
			if finished {
				return
			}
			t.Errorf("plaitdeploy: %s still running after COMPLEMENT_TEST_TIMEOUT=%s: killing its Plait servers", t.Name(), limit)
			d.teardown(t, true)
		})
		c.Cleanup(func() {
			mu.Lock()
			finished = true
			mu.Unlock()
			timer.Stop()
			d.Destroy(t)
		})
	}
	return d
}

// perTestTimeout is COMPLEMENT_TEST_TIMEOUT (a Go duration), default 5m.
func perTestTimeout() time.Duration {
	if v, err := time.ParseDuration(os.Getenv("COMPLEMENT_TEST_TIMEOUT")); err == nil && v > 0 {
		return v
	}
	return 5 * time.Minute
}

// Cleanup is the complement.WithCleanup callback: it kills every Plait process
// that this package started and that is still running.
func Cleanup(_ *config.Complement) {
	liveMu.Lock()
	servers := make([]*server, 0, len(live))
	for s := range live {
		servers = append(servers, s)
	}
	liveMu.Unlock()
	for _, s := range servers {
		_ = s.stop(2 * time.Second)
	}
}

// Deployment is a set of Plait processes for one test.
type Deployment struct {
	cfg       *config.Complement
	dir       string
	caPool    *x509.CertPool
	ipNames   bool
	mu        sync.Mutex
	servers   map[string]*server
	order     []string
	destroyed bool
	counter   atomic.Int64
}

var _ complement.Deployment = (*Deployment)(nil)

func (d *Deployment) hs(t ct.TestLike, fn, hsName string) *server {
	t.Helper()
	s, ok := d.servers[hsName]
	if !ok {
		ct.Fatalf(t, "plaitdeploy: %s: no homeserver named %q in this deployment (have %s)", fn, hsName, strings.Join(d.order, ", "))
	}
	return s
}

// hostsEnv is PLAIT_FEDERATION_HOSTS: "hs1=127.0.0.1:PORT,hs2=127.0.0.1:PORT".
// It maps each server name of this deployment to its federation listener, so
// that Plait can reach "hs2" without DNS, .well-known or SRV.
func (d *Deployment) hostsEnv() string {
	parts := make([]string, 0, len(d.order))
	for _, hsName := range d.order {
		s := d.servers[hsName]
		parts = append(parts, fmt.Sprintf("%s=%s:%d", s.serverName, loopback, s.fedPort))
	}
	return strings.Join(parts, ",")
}

// rehost is called when a server had to move to other ports before its first
// start; the others started with the old map, so in hs mode only names stay
// stable and the map is refreshed for later restarts.
func (d *Deployment) rehost() {
	d.mu.Lock()
	defer d.mu.Unlock()
	hosts := d.hostsEnv()
	for _, s := range d.servers {
		s.mu.Lock()
		s.hostsEnv = hosts
		s.mu.Unlock()
	}
}

func (d *Deployment) GetFullyQualifiedHomeserverName(t ct.TestLike, hsName string) spec.ServerName {
	t.Helper()
	return spec.ServerName(d.hs(t, "GetFullyQualifiedHomeserverName", hsName).serverName)
}

func (d *Deployment) newClient(t ct.TestLike, s *server) *client.CSAPI {
	return client.NewCSAPI(client.CSAPIOpts{
		BaseURL:          s.baseURL(),
		Client:           client.NewLoggedClient(t, s.hsName, nil),
		SyncUntilTimeout: 5 * time.Second,
		Debug:            d.cfg.DebugLoggingEnabled,
	})
}

func (d *Deployment) UnauthenticatedClient(t ct.TestLike, hsName string) *client.CSAPI {
	t.Helper()
	return d.newClient(t, d.hs(t, "UnauthenticatedClient", hsName))
}

// Register creates a user with the spec registration API (POST
// /_matrix/client/v3/register with m.login.dummy auth). Admin users need
// Synapse's shared-secret registration (/_synapse/admin/v1/register, secret
// "complement", docs/admin_api.md); Complement's client skips the test when it is off.
func (d *Deployment) Register(t ct.TestLike, hsName string, opts helpers.RegistrationOpts) *client.CSAPI {
	t.Helper()
	s := d.hs(t, "Register", hsName)
	c := d.newClient(t, s)
	password := opts.Password
	if password == "" {
		password = "complement_meets_min_password_req"
	}
	c.Password = password
	localpart := fmt.Sprintf("user-%d", d.counter.Add(1))
	if opts.LocalpartSuffix != "" {
		localpart += "-" + opts.LocalpartSuffix
	}
	var userID, token, deviceID string
	if opts.IsAdmin {
		userID, token, deviceID = c.RegisterSharedSecret(t, localpart, password, true)
	} else {
		userID, token, deviceID = c.RegisterUser(t, localpart, password)
	}
	s.mu.Lock()
	s.tokens[userID] = token
	s.devices[userID] = deviceID
	s.mu.Unlock()
	c.UserID, c.AccessToken, c.DeviceID = userID, token, deviceID
	return c
}

// Login logs in again as the user of an existing client (password login).
func (d *Deployment) Login(t ct.TestLike, hsName string, existing *client.CSAPI, opts helpers.LoginOpts) *client.CSAPI {
	t.Helper()
	s := d.hs(t, "Login", hsName)
	localpart := strings.TrimPrefix(existing.UserID, "@")
	if i := strings.IndexByte(localpart, ':'); i >= 0 {
		localpart = localpart[:i]
	}
	if localpart == "" {
		ct.Fatalf(t, "plaitdeploy: Login: existing client has no usable user ID %q", existing.UserID)
	}
	c := d.newClient(t, s)
	c.Password = existing.Password
	if opts.Password != "" {
		c.Password = opts.Password
	}
	var userID, token, deviceID string
	if opts.DeviceID == "" {
		userID, token, deviceID = c.LoginUser(t, localpart, c.Password)
	} else {
		userID, token, deviceID = c.LoginUser(t, localpart, c.Password, client.WithDeviceID(opts.DeviceID))
	}
	c.UserID, c.AccessToken, c.DeviceID = userID, token, deviceID
	return c
}

// AppServiceUser returns a client for a user whose access token this
// deployment knows. Application services are only set up by Docker
// blueprints, so for Plait this only works for users registered here.
func (d *Deployment) AppServiceUser(t ct.TestLike, hsName, userID string) *client.CSAPI {
	t.Helper()
	s := d.hs(t, "AppServiceUser", hsName)
	s.mu.Lock()
	token, deviceID := s.tokens[userID], s.devices[userID]
	s.mu.Unlock()
	if token == "" && userID != "" {
		ct.Fatalf(t, "plaitdeploy: AppServiceUser: no access token for %s on %s (application services need Docker blueprints)", userID, hsName)
	}
	c := d.newClient(t, s)
	c.UserID, c.AccessToken, c.DeviceID = userID, token, deviceID
	return c
}

// Restart stops every server (SIGTERM) and starts it again on the same ports
// and database, so tests can check what Plait persisted.
func (d *Deployment) Restart(t ct.TestLike) error {
	t.Helper()
	for _, hsName := range d.order {
		s := d.servers[hsName]
		if err := s.stop(10 * time.Second); err != nil {
			t.Errorf("plaitdeploy: Restart: stopping %s: %s", hsName, err)
			return err
		}
		if err := s.start(); err != nil {
			t.Errorf("plaitdeploy: Restart: starting %s: %s\n%s", hsName, err, s.logTail())
			return err
		}
	}
	return nil
}

func (d *Deployment) StopServer(t ct.TestLike, hsName string) {
	t.Helper()
	t.Logf("StopServer %s", hsName)
	if err := d.hs(t, "StopServer", hsName).stop(10 * time.Second); err != nil {
		ct.Fatalf(t, "plaitdeploy: StopServer %s: %s", hsName, err)
	}
}

func (d *Deployment) StartServer(t ct.TestLike, hsName string) {
	t.Helper()
	t.Logf("StartServer %s", hsName)
	s := d.hs(t, "StartServer", hsName)
	if s.running() {
		ct.Fatalf(t, "plaitdeploy: StartServer %s: it is already running", hsName)
	}
	if err := s.start(); err != nil {
		ct.Fatalf(t, "plaitdeploy: StartServer %s: %s\n%s", hsName, err, s.logTail())
	}
}

// PauseServer suspends the process (SIGSTOP): ports and memory stay as they are.
func (d *Deployment) PauseServer(t ct.TestLike, hsName string) {
	t.Helper()
	t.Logf("PauseServer %s", hsName)
	if err := d.hs(t, "PauseServer", hsName).signal(syscall.SIGSTOP); err != nil {
		ct.Fatalf(t, "plaitdeploy: PauseServer %s: %s", hsName, err)
	}
}

func (d *Deployment) UnpauseServer(t ct.TestLike, hsName string) {
	t.Helper()
	t.Logf("UnpauseServer %s", hsName)
	if err := d.hs(t, "UnpauseServer", hsName).signal(syscall.SIGCONT); err != nil {
		ct.Fatalf(t, "plaitdeploy: UnpauseServer %s: %s", hsName, err)
	}
}

// ContainerID has no container to name: it returns "plait-pid-<pid>".
func (d *Deployment) ContainerID(t ct.TestLike, hsName string) string {
	t.Helper()
	return fmt.Sprintf("plait-pid-%d", d.hs(t, "ContainerID", hsName).pid())
}

// Destroy kills the servers, prints their output if the test failed (or
// COMPLEMENT_ALWAYS_PRINT_SERVER_LOGS=1) and removes the temp dirs.
func (d *Deployment) Destroy(t ct.TestLike) {
	t.Helper()
	d.teardown(t, t.Failed() || d.cfg.AlwaysPrintServerLogs)
}

func (d *Deployment) teardown(t ct.TestLike, printLogs bool) {
	d.mu.Lock()
	if d.destroyed {
		d.mu.Unlock()
		return
	}
	d.destroyed = true
	d.mu.Unlock()
	for _, hsName := range d.order {
		_ = d.servers[hsName].stop(5 * time.Second)
	}
	if printLogs {
		for _, hsName := range d.order {
			s := d.servers[hsName]
			t.Logf("plaitdeploy: ===== %s (%s) server output =====\n%s", hsName, s.serverName, s.logTail())
		}
	}
	keep := printLogs && os.Getenv("PLAIT_COMPLEMENT_KEEP_DATA") == "1"
	if keep {
		t.Logf("plaitdeploy: kept %s", d.dir)
	} else {
		_ = os.RemoveAll(d.dir)
	}
}

func (d *Deployment) GetConfig() *config.Complement { return d.cfg }

// Network: there is no Docker network; everything is on loopback.
func (d *Deployment) Network() string { return "" }

// RoundTripper sends federation requests made by Complement (its in-process
// federation servers and federation clients) to the right process: hsN (or
// its IP server name) goes to that server's federation port, verified against
// Complement's CA; Complement's own server name goes to loopback.
func (d *Deployment) RoundTripper() http.RoundTripper {
	return &roundTripper{d: d}
}

type roundTripper struct {
	d     *Deployment
	once  sync.Once
	tr    *http.Transport
	bySNI sync.Map // TLS server name -> *http.Transport
}

func (rt *roundTripper) RoundTrip(req *http.Request) (*http.Response, error) {
	rt.once.Do(func() {
		rt.tr = &http.Transport{
			TLSClientConfig:     &tls.Config{RootCAs: rt.d.caPool},
			MaxIdleConnsPerHost: 4,
			IdleConnTimeout:     30 * time.Second,
		}
	})
	host := req.URL.Host
	target := ""
	for _, s := range rt.d.servers {
		if host == s.serverName || req.URL.Hostname() == s.hsName {
			target = net.JoinHostPort(loopback, strconv.Itoa(s.fedPort))
			break
		}
	}
	if target == "" {
		if req.URL.Hostname() != rt.d.cfg.HostnameRunningComplement {
			return nil, fmt.Errorf("plaitdeploy: unknown federation destination %q", host)
		}
		target = host
	}
	r := req.Clone(req.Context())
	r.URL.Scheme = "https"
	r.URL.Host = target
	// Verify the certificate for the server name (SNI), not for the loopback
	// address the request is actually sent to.
	tlsName := req.URL.Hostname()
	if tlsName != rt.d.cfg.HostnameRunningComplement {
		v, ok := rt.bySNI.Load(tlsName)
		if !ok {
			tr := rt.tr.Clone()
			tr.TLSClientConfig.ServerName = tlsName
			v, _ = rt.bySNI.LoadOrStore(tlsName, tr)
		}
		return v.(*http.Transport).RoundTrip(r)
	}
	return rt.tr.RoundTrip(r)
}

// server is one Plait process (and its restarts).
type server struct {
	hsName     string
	bin        string
	dir        string
	caFile     string
	cfg        *config.Complement
	serverName string
	clientPort int
	fedPort    int

	mu       sync.Mutex
	hostsEnv string
	cmd      *exec.Cmd
	done     chan struct{}
	exitErr  error
	logFile  string
	tokens   map[string]string
	devices  map[string]string
	starts   int
}

func (s *server) baseURL() string {
	return fmt.Sprintf("http://%s:%d", loopback, s.clientPort)
}

func (s *server) pid() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cmd == nil || s.cmd.Process == nil {
		return 0
	}
	return s.cmd.Process.Pid
}

func (s *server) running() bool {
	s.mu.Lock()
	done := s.done
	s.mu.Unlock()
	if done == nil {
		return false
	}
	select {
	case <-done:
		return false
	default:
		return true
	}
}

// allocate picks ports, the server name and a TLS certificate for it.
func (s *server) allocate(ipNames bool) error {
	if s.tokens == nil {
		s.tokens, s.devices = map[string]string{}, map[string]string{}
	}
	if err := os.MkdirAll(filepath.Join(s.dir, "db"), 0o755); err != nil {
		return err
	}
	ports, err := freePorts(2)
	if err != nil {
		return err
	}
	s.clientPort, s.fedPort = ports[0], ports[1]
	if ipNames {
		s.serverName = fmt.Sprintf("%s:%d", loopback, s.fedPort)
	} else {
		s.serverName = s.hsName
	}
	return s.writeCert()
}

// writeCert issues the federation certificate for this server from
// Complement's CA: subject and DNS name hsN, plus 127.0.0.1 and localhost.
func (s *server) writeCert() error {
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		return err
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 120))
	if err != nil {
		return err
	}
	host := s.serverName
	if h, _, err := net.SplitHostPort(host); err == nil {
		host = h
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: host, Organization: []string{"Plait Complement"}},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(7 * 24 * time.Hour),
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		BasicConstraintsValid: true,
		DNSNames:              []string{"localhost"},
		IPAddresses:           []net.IP{net.ParseIP(loopback)},
	}
	if net.ParseIP(host) == nil {
		tmpl.DNSNames = append([]string{host}, tmpl.DNSNames...)
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, s.cfg.CACertificate, &key.PublicKey, s.cfg.CAPrivateKey)
	if err != nil {
		return err
	}
	certPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
	// The chain: leaf then CA, so clients that only know the CA can verify.
	caPEM, err := s.cfg.CACertificateBytes()
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(s.dir, "tls.crt"), append(certPEM, caPEM...), 0o644); err != nil {
		return err
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(s.dir, "tls.key"), pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}), 0o600)
}

func (s *server) env() []string {
	env := []string{}
	for _, kv := range os.Environ() {
		// Do not leak our own knobs or another server's settings into Plait.
		if strings.HasPrefix(kv, "PLAIT_") {
			continue
		}
		env = append(env, kv)
	}
	if p := s.cfg.EnvVarsPropagatePrefix; p != "" {
		for _, kv := range os.Environ() {
			if strings.HasPrefix(kv, p) {
				env = append(env, strings.TrimPrefix(kv, p))
			}
		}
	}
	s.mu.Lock()
	hosts := s.hostsEnv
	s.mu.Unlock()
	env = append(env,
		"PLAIT_SERVER_NAME="+s.serverName,
		fmt.Sprintf("PLAIT_LISTEN=%s:%d", loopback, s.clientPort),
		"PLAIT_DATABASE_PATH="+filepath.Join(s.dir, "db"),
		"PLAIT_REGISTRATION=open",
		// Complement registers, logs in and sends from one address as fast as it can (Synapse's
		// Complement image raises its rc_* limits too).
		"PLAIT_RATE_LIMITS_ENABLED=false",
		fmt.Sprintf("PLAIT_FEDERATION_LISTEN=%s:%d", loopback, s.fedPort),
		"PLAIT_TLS_CERT="+filepath.Join(s.dir, "tls.crt"),
		"PLAIT_TLS_KEY="+filepath.Join(s.dir, "tls.key"),
		"PLAIT_FEDERATION_CA_FILE="+s.caFile,
		"PLAIT_FEDERATION_HOSTS="+hosts,
		// Everything federates on loopback (the homeservers and Complement's own servers),
		// which the default ip_range_denylist refuses: allow it explicitly.
		`PLAIT_IP_RANGE_ALLOWLIST=["127.0.0.0/8","::1/128"]`,
		// Synapse-style shared-secret registration of admins (docs/admin_api.md).
		"PLAIT_REGISTRATION_SHARED_SECRET="+client.SharedSecret,
		// Serve media without a token on the deprecated /_matrix/media/v3 (and r0) download
		// and thumbnail endpoints: the counterpart of Synapse's `enable_authenticated_media:
		// false`. Synapse keeps the default (true) and skips the tests of those endpoints with
		// its synapse_blacklist build tag; this run has no such tag, so they run here, and
		// Plait would otherwise answer them 404 (frozen since spec v1.11, its default).
		"PLAIT_LEGACY_MEDIA_UNAUTHENTICATED=true",
		// URL previews on, to Complement's web server on loopback: Synapse's Complement
		// config sets `url_preview_enabled: true` and `url_preview_ip_range_blacklist: []`.
		"PLAIT_URL_PREVIEW_ENABLED=true",
		"PLAIT_URL_PREVIEW_IP_DENYLIST=[]",
	)
	if os.Getenv("RUST_LOG") == "" {
		env = append(env, "RUST_LOG=info")
	}
	return env
}

var errAddrInUse = errors.New("address in use")

// startWithPortRetry is the first start: if another process grabbed one of
// our ports between probing and binding, move to new ports (up to 3 times).
func (s *server) startWithPortRetry(ipNames bool, rehost func()) error {
	var err error
	for attempt := 0; attempt < 3; attempt++ {
		if attempt > 0 {
			if err = s.allocate(ipNames); err != nil {
				return err
			}
			rehost()
		}
		err = s.start()
		if err == nil || !errors.Is(err, errAddrInUse) {
			break
		}
	}
	if err != nil {
		return fmt.Errorf("%s: %w\n%s", s.hsName, err, s.logTail())
	}
	return nil
}

func (s *server) start() error {
	s.mu.Lock()
	s.starts++
	s.logFile = filepath.Join(s.dir, fmt.Sprintf("plait.%d.log", s.starts))
	s.mu.Unlock()
	logf, err := os.Create(s.logFile)
	if err != nil {
		return err
	}
	cmd := exec.Command(s.bin)
	cmd.Dir = s.dir
	cmd.Env = s.env()
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{
		Setpgid: true,
		// If the test binary dies (e.g. go test's -timeout panic), take Plait with it.
		Pdeathsig: syscall.SIGKILL,
	}
	if err := cmd.Start(); err != nil {
		logf.Close()
		return fmt.Errorf("starting %s: %w", s.bin, err)
	}
	done := make(chan struct{})
	s.mu.Lock()
	s.cmd, s.done, s.exitErr = cmd, done, nil
	s.mu.Unlock()
	liveMu.Lock()
	live[s] = struct{}{}
	liveMu.Unlock()
	go func() {
		err := cmd.Wait()
		logf.Close()
		s.mu.Lock()
		s.exitErr = err
		s.mu.Unlock()
		liveMu.Lock()
		delete(live, s)
		liveMu.Unlock()
		close(done)
	}()
	if err := s.waitReady(done); err != nil {
		_ = s.stop(2 * time.Second)
		if strings.Contains(strings.ToLower(s.logTail()), "address already in use") ||
			strings.Contains(strings.ToLower(s.logTail()), "addrinuse") {
			return fmt.Errorf("%w: %v", errAddrInUse, err)
		}
		return err
	}
	return nil
}

// waitReady polls GET /_matrix/client/versions until it answers 200, the
// process exits, or COMPLEMENT_SPAWN_HS_TIMEOUT_SECS (default 30s) passes.
func (s *server) waitReady(done chan struct{}) error {
	timeout := s.cfg.SpawnHSTimeout
	if timeout <= 0 {
		timeout = 30 * time.Second
	}
	deadline := time.Now().Add(timeout)
	hc := &http.Client{Timeout: 2 * time.Second}
	url := s.baseURL() + "/_matrix/client/versions"
	var last string
	for {
		select {
		case <-done:
			s.mu.Lock()
			e := s.exitErr
			s.mu.Unlock()
			return fmt.Errorf("plait exited before it was ready: %v", e)
		default:
		}
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		res, err := hc.Do(req)
		if err == nil {
			_, _ = io.Copy(io.Discard, res.Body)
			res.Body.Close()
			if res.StatusCode == http.StatusOK {
				cancel()
				return nil
			}
			last = res.Status
		} else {
			last = err.Error()
		}
		cancel()
		if time.Now().After(deadline) {
			return fmt.Errorf("not ready after %s: GET %s: %s", timeout, url, last)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// stop sends SIGTERM, then SIGKILL after grace; only ever to our own child.
func (s *server) stop(grace time.Duration) error {
	s.mu.Lock()
	cmd, done := s.cmd, s.done
	s.mu.Unlock()
	if cmd == nil || done == nil {
		return nil
	}
	select {
	case <-done:
		return nil
	default:
	}
	// A paused process must be resumed to handle SIGTERM.
	_ = cmd.Process.Signal(syscall.SIGCONT)
	_ = cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-done:
		return nil
	case <-time.After(grace):
	}
	_ = cmd.Process.Kill()
	select {
	case <-done:
		return nil
	case <-time.After(5 * time.Second):
		return fmt.Errorf("pid %d did not exit after SIGKILL", cmd.Process.Pid)
	}
}

func (s *server) signal(sig syscall.Signal) error {
	s.mu.Lock()
	cmd := s.cmd
	s.mu.Unlock()
	if cmd == nil || !s.running() {
		return fmt.Errorf("%s is not running", s.hsName)
	}
	return cmd.Process.Signal(sig)
}

// logTail returns the last PLAIT_COMPLEMENT_LOG_LINES (default 400) lines of
// every log file this server wrote, oldest start first.
func (s *server) logTail() string {
	limit := 400
	if v, err := strconv.Atoi(os.Getenv("PLAIT_COMPLEMENT_LOG_LINES")); err == nil && v >= 0 {
		limit = v
	}
	files, _ := filepath.Glob(filepath.Join(s.dir, "plait.*.log"))
	sort.Slice(files, func(i, j int) bool { return logIndex(files[i]) < logIndex(files[j]) })
	var lines []string
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		lines = append(lines, fmt.Sprintf("--- %s ---", filepath.Base(f)))
		sc := bufio.NewScanner(bytes.NewReader(data))
		sc.Buffer(make([]byte, 64*1024), 4*1024*1024)
		for sc.Scan() {
			lines = append(lines, sc.Text())
		}
	}
	if limit > 0 && len(lines) > limit {
		lines = append([]string{fmt.Sprintf("... (%d earlier lines cut)", len(lines)-limit)}, lines[len(lines)-limit:]...)
	}
	return strings.Join(lines, "\n")
}

func logIndex(path string) int {
	base := strings.TrimSuffix(strings.TrimPrefix(filepath.Base(path), "plait."), ".log")
	n, _ := strconv.Atoi(base)
	return n
}

func freePorts(n int) ([]int, error) {
	ls := make([]net.Listener, 0, n)
	defer func() {
		for _, l := range ls {
			l.Close()
		}
	}()
	ports := make([]int, 0, n)
	for i := 0; i < n; i++ {
		l, err := net.Listen("tcp", loopback+":0")
		if err != nil {
			return nil, err
		}
		ls = append(ls, l)
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}

func plaitBinary() (string, error) {
	bin := os.Getenv("PLAIT_BIN")
	if bin == "" {
		target := os.Getenv("CARGO_TARGET_DIR")
		if target == "" {
			return "", errors.New("PLAIT_BIN is not set (run through complement/run.sh)")
		}
		bin = filepath.Join(target, "release", "plait")
	}
	abs, err := filepath.Abs(bin)
	if err != nil {
		return "", err
	}
	if st, err := os.Stat(abs); err != nil || st.IsDir() {
		return "", fmt.Errorf("no Plait binary at %s", abs)
	}
	return abs, nil
}

func sanitize(s string) string {
	return strings.Map(func(r rune) rune {
		if r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' {
			return r
		}
		return '_'
	}, s)
}
