// Package kmsserver is an in-process Cloud KMS for tests: a gRPC server of
// google.cloud.kms.v1.KeyManagementService that the real client library
// talks to over a loopback connection.
//
// It implements the subset of the API that package gcpkms uses, with the
// semantics the API documents:
//
//   - CryptoKeys of any purpose, each with numbered versions; an
//     ENCRYPT_DECRYPT key has a primary version that Encrypt uses.
//   - Authenticated ciphertexts: AES-256-GCM under the version's own key,
//     with the request's additional authenticated data, behind a header that
//     names the version by a random identifier, so that Decrypt finds the
//     version and any altered ciphertext fails with INVALID_ARGUMENT.
//   - CRC32C (Castagnoli) integrity fields: request checksums are verified
//     when present (a mismatch is INVALID_ARGUMENT, with the API's message)
//     and reported in the verified_* fields; responses carry checksums of
//     what they return.
//   - Version states: disabling, re-enabling, scheduling destruction (the
//     key's destroy_scheduled_duration, 30 days unless set), restoring, and
//     completing scheduled destruction on demand ([Server.ExpireDestruction]).
//     A version that is not ENABLED refuses Decrypt, and Encrypt on a key
//     whose primary version is not ENABLED fails, both with
//     FAILED_PRECONDITION. Every version of a key may be destroyed, the
//     primary included; the key and its destroyed versions stay listed, and
//     the key still accepts new versions, as in Cloud KMS.
//
// Fault injection makes it misbehave on purpose: queued gRPC errors per
// method ([Server.InjectFaults]), responses whose payload is altered while
// their checksum is not ([Server.CorruptResponses]), requests altered "in
// transit" ([Server.CorruptRequests]), responses lost after the work was
// done ([Server.LoseResponses]) and request checksums that are "lost"
// ([Server.DropChecksums]). Counters report how many calls each method saw
// and how many carried correct checksums for every payload.
package kmsserver

import (
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"fmt"
	"hash/crc32"
	"net"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"cloud.google.com/go/kms/apiv1/kmspb"
	"google.golang.org/api/option"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

// Method names a KeyManagementService method, for fault injection and
// counters.
type Method string

// The methods the server implements.
const (
	Encrypt                       Method = "Encrypt"
	Decrypt                       Method = "Decrypt"
	GetCryptoKey                  Method = "GetCryptoKey"
	GetCryptoKeyVersion           Method = "GetCryptoKeyVersion"
	ListCryptoKeyVersions         Method = "ListCryptoKeyVersions"
	CreateCryptoKeyVersion        Method = "CreateCryptoKeyVersion"
	UpdateCryptoKeyPrimaryVersion Method = "UpdateCryptoKeyPrimaryVersion"
	UpdateCryptoKeyVersion        Method = "UpdateCryptoKeyVersion"
	DestroyCryptoKeyVersion       Method = "DestroyCryptoKeyVersion"
	RestoreCryptoKeyVersion       Method = "RestoreCryptoKeyVersion"
)

// Limits of the API for SOFTWARE keys.
const (
	MaxPlaintext = 64 << 10 // bytes of plaintext Encrypt accepts
	MaxAAD       = 64 << 10 // bytes of additional authenticated data
)

const (
	defaultDestroyDelay = 30 * 24 * time.Hour
	defaultPageSize     = 25
	maxPageSize         = 1000
	idSize              = 8 // random identifier of a version in ciphertexts
	ctFormat            = 0x5a
	headerSize          = 1 + idSize
	nonceSize           = 12
	tagSize             = 16
	maxCiphertext       = headerSize + nonceSize + MaxPlaintext + tagSize
)

// Messages of the real service, which clients may match.
const (
	msgInvalidCiphertext = "Decryption failed: the ciphertext is invalid."
	msgWrongKey          = "Decryption failed: verify that 'name' refers to the correct CryptoKey."
)

var (
	keyNameRE     = regexp.MustCompile(`^projects/[^/]+/locations/[^/]+/keyRings/[^/]+/cryptoKeys/[^/]+$`)
	versionNameRE = regexp.MustCompile(`^(projects/[^/]+/locations/[^/]+/keyRings/[^/]+/cryptoKeys/[^/]+)/cryptoKeyVersions/([1-9][0-9]*)$`)
	castagnoli    = crc32.MakeTable(crc32.Castagnoli)
)

func crc(b []byte) int64 { return int64(crc32.Checksum(b, castagnoli)) }

// Server is an in-process Cloud KMS. It is safe for concurrent use.
type Server struct {
	kmspb.UnimplementedKeyManagementServiceServer

	mu                sync.Mutex
	keys              map[string]*cryptoKey
	ids               map[[idSize]byte]*keyVersion
	faults            map[Method][]codes.Code
	corruptResponses  map[Method]int
	corruptRequests   map[Method]int
	dropChecksums     map[Method]int
	lostResponses     map[Method]int
	calls             map[Method]int
	checksummed       map[Method]int
	pendingGeneration bool
	disableFirst      bool
	now               func() time.Time

	grpc *grpc.Server
	lis  net.Listener
}

type cryptoKey struct {
	name         string
	purpose      kmspb.CryptoKey_CryptoKeyPurpose
	created      time.Time
	primary      uint32 // 0: none
	destroyDelay time.Duration
	versions     []*keyVersion // versions[i] is version i+1
}

type keyVersion struct {
	key         *cryptoKey
	num         uint32
	id          [idSize]byte
	aead        cipher.AEAD // nil once destroyed
	state       kmspb.CryptoKeyVersion_CryptoKeyVersionState
	created     time.Time
	destroyTime time.Time
}

func (v *keyVersion) name() string {
	return v.key.name + "/cryptoKeyVersions/" + strconv.FormatUint(uint64(v.num), 10)
}

// New returns a server with no keys that does not listen yet; see Start.
func New() *Server {
	return &Server{
		keys:             map[string]*cryptoKey{},
		ids:              map[[idSize]byte]*keyVersion{},
		faults:           map[Method][]codes.Code{},
		corruptResponses: map[Method]int{},
		corruptRequests:  map[Method]int{},
		dropChecksums:    map[Method]int{},
		lostResponses:    map[Method]int{},
		calls:            map[Method]int{},
		checksummed:      map[Method]int{},
		now:              time.Now,
	}
}

// Start returns a new server listening on a loopback TCP port.
func Start() (*Server, error) {
	s := New()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	s.lis = lis
	s.grpc = grpc.NewServer(grpc.UnaryInterceptor(s.loseResponses))
	kmspb.RegisterKeyManagementServiceServer(s.grpc, s)
	go s.grpc.Serve(lis)
	return s, nil
}

// Addr returns the server's host:port.
func (s *Server) Addr() string { return s.lis.Addr().String() }

// ClientOptions returns the options that connect the real client library
// to the server: its endpoint, no credentials, and a plaintext connection.
func (s *Server) ClientOptions() []option.ClientOption {
	return []option.ClientOption{
		option.WithEndpoint(s.Addr()),
		option.WithoutAuthentication(),
		option.WithGRPCDialOption(grpc.WithTransportCredentials(insecure.NewCredentials())),
	}
}

// Stop closes the listener and every connection at once.
func (s *Server) Stop() {
	if s.grpc != nil {
		s.grpc.Stop()
	}
}

// CreateKey creates a CryptoKey with one version. An ENCRYPT_DECRYPT key gets
// that version as its primary. name is the full resource name,
// projects/P/locations/L/keyRings/R/cryptoKeys/K.
func (s *Server) CreateKey(name string, purpose kmspb.CryptoKey_CryptoKeyPurpose) error {
	if !keyNameRE.MatchString(name) {
		return fmt.Errorf("kmsserver: malformed key name %q", name)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, dup := s.keys[name]; dup {
		return fmt.Errorf("kmsserver: key %s exists", name)
	}
	k := &cryptoKey{name: name, purpose: purpose, created: s.now(), destroyDelay: defaultDestroyDelay}
	v := s.newVersion(k)
	v.state = kmspb.CryptoKeyVersion_ENABLED
	if purpose == kmspb.CryptoKey_ENCRYPT_DECRYPT {
		k.primary = v.num
	}
	s.keys[name] = k
	return nil
}

// InjectFaults queues errors with the given codes for method: each of its
// next calls fails with the next code in the queue, before doing anything.
func (s *Server) InjectFaults(m Method, cs ...codes.Code) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.faults[m] = append(s.faults[m], cs...)
}

// CorruptResponses makes the next n successful responses of method (Encrypt
// or Decrypt) carry an altered payload (one byte of the ciphertext or
// plaintext flipped) with the checksum of the original, as a response
// damaged in transit would.
func (s *Server) CorruptResponses(m Method, n int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.corruptResponses[m] += n
}

// CorruptRequests makes the next n requests of method (Encrypt or Decrypt)
// arrive with one byte of their payload (plaintext or ciphertext) flipped,
// as a request damaged in transit would; their checksums are left alone.
func (s *Server) CorruptRequests(m Method, n int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.corruptRequests[m] += n
}

// DropChecksums makes the next n requests of method (Encrypt or Decrypt)
// arrive without their checksum fields, as if they had not been delivered.
func (s *Server) DropChecksums(m Method, n int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.dropChecksums[m] += n
}

// LoseResponses makes the next n calls of method do their work and then
// fail with UNAVAILABLE, as if the response had been lost on its way back.
func (s *Server) LoseResponses(m Method, n int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.lostResponses[m] += n
}

// loseResponses is the interceptor behind LoseResponses.
func (s *Server) loseResponses(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	resp, err := handler(ctx, req)
	m := Method(info.FullMethod[strings.LastIndexByte(info.FullMethod, '/')+1:])
	s.mu.Lock()
	defer s.mu.Unlock()
	if err == nil && take(s.lostResponses, m) {
		return nil, status.Error(codes.Unavailable, "injected fault: response lost")
	}
	return resp, err
}

// Calls returns how many calls of method the server has received,
// including those that failed.
func (s *Server) Calls(m Method) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.calls[m]
}

// VerifiedChecksums returns how many requests of method (Encrypt or
// Decrypt) carried a checksum for each of their payloads (plaintext or
// ciphertext, and additional authenticated data) that matched what
// arrived.
func (s *Server) VerifiedChecksums(m Method) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.checksummed[m]
}

// ResetCounters sets every counter to zero.
func (s *Server) ResetCounters() {
	s.mu.Lock()
	defer s.mu.Unlock()
	clear(s.calls)
	clear(s.checksummed)
}

// SetPendingGeneration makes new versions start in PENDING_GENERATION, as
// HSM keys do, and become ENABLED once GetCryptoKeyVersion has seen them.
func (s *Server) SetPendingGeneration(pending bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.pendingGeneration = pending
}

// RequireDisableBeforeDestroy makes DestroyCryptoKeyVersion refuse ENABLED
// versions, as the organization policy constraint
// constraints/cloudkms.disableBeforeDestroy does.
func (s *Server) RequireDisableBeforeDestroy(require bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.disableFirst = require
}

// SetDestroyDelay sets the key's destroy_scheduled_duration.
func (s *Server) SetDestroyDelay(keyName string, d time.Duration) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	k, ok := s.keys[keyName]
	if !ok {
		return fmt.Errorf("kmsserver: no key %s", keyName)
	}
	k.destroyDelay = d
	return nil
}

// VersionState returns the state of version v of the key, or
// CRYPTO_KEY_VERSION_STATE_UNSPECIFIED if there is no such version.
func (s *Server) VersionState(keyName string, v uint32) kmspb.CryptoKeyVersion_CryptoKeyVersionState {
	s.mu.Lock()
	defer s.mu.Unlock()
	k, ok := s.keys[keyName]
	if !ok || v == 0 || int(v) > len(k.versions) {
		return kmspb.CryptoKeyVersion_CRYPTO_KEY_VERSION_STATE_UNSPECIFIED
	}
	return k.versions[v-1].state
}

// ExpireDestruction completes every scheduled destruction now: versions in
// DESTROY_SCHEDULED become DESTROYED and their key material is erased.
func (s *Server) ExpireDestruction() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, k := range s.keys {
		for _, v := range k.versions {
			if v.state == kmspb.CryptoKeyVersion_DESTROY_SCHEDULED {
				v.state = kmspb.CryptoKeyVersion_DESTROYED
				v.aead = nil
			}
		}
	}
}

// enter counts a call of m and returns the fault queued for it, if any.
func (s *Server) enter(m Method) error {
	s.calls[m]++
	if q := s.faults[m]; len(q) > 0 {
		c := q[0]
		s.faults[m] = q[1:]
		return status.Errorf(c, "injected fault: %v", c)
	}
	return nil
}

// take decrements a positive counter and reports whether it was positive.
func take(counts map[Method]int, m Method) bool {
	if counts[m] > 0 {
		counts[m]--
		return true
	}
	return false
}

func flip(b []byte) []byte {
	out := slices.Clone(b)
	if len(out) > 0 {
		out[len(out)/2] ^= 0x01
	}
	return out
}

func (s *Server) newVersion(k *cryptoKey) *keyVersion {
	key := make([]byte, 32)
	rand.Read(key)
	block, err := aes.NewCipher(key)
	if err != nil {
		panic(err)
	}
	aead, err := cipher.NewGCM(block)
	if err != nil {
		panic(err)
	}
	v := &keyVersion{key: k, num: uint32(len(k.versions) + 1), aead: aead, created: s.now()}
	for {
		rand.Read(v.id[:])
		if _, dup := s.ids[v.id]; !dup {
			break
		}
	}
	s.ids[v.id] = v
	k.versions = append(k.versions, v)
	return v
}

// lookupKey finds a key by resource name. s.mu must be held.
func (s *Server) lookupKey(name string) (*cryptoKey, error) {
	if !keyNameRE.MatchString(name) {
		return nil, status.Errorf(codes.InvalidArgument, "Resource name [%s] does not represent a valid CryptoKey.", name)
	}
	k, ok := s.keys[name]
	if !ok {
		return nil, status.Errorf(codes.NotFound, "CryptoKey %s not found.", name)
	}
	return k, nil
}

// lookupVersion finds a version by resource name. s.mu must be held.
func (s *Server) lookupVersion(name string) (*keyVersion, error) {
	m := versionNameRE.FindStringSubmatch(name)
	if m == nil {
		return nil, status.Errorf(codes.InvalidArgument, "Resource name [%s] does not represent a valid CryptoKeyVersion.", name)
	}
	k, ok := s.keys[m[1]]
	n, err := strconv.ParseUint(m[2], 10, 32)
	if !ok || err != nil || n == 0 || n > uint64(len(k.versions)) {
		return nil, status.Errorf(codes.NotFound, "CryptoKeyVersion %s not found.", name)
	}
	return k.versions[n-1], nil
}

func notEnabled(v *keyVersion) error {
	return status.Errorf(codes.FailedPrecondition,
		"The request cannot be fulfilled. Resource %s is not enabled, current state is: %s.", v.name(), v.state)
}

func (s *Server) versionProto(v *keyVersion) *kmspb.CryptoKeyVersion {
	out := &kmspb.CryptoKeyVersion{
		Name:            v.name(),
		State:           v.state,
		ProtectionLevel: kmspb.ProtectionLevel_SOFTWARE,
		Algorithm:       kmspb.CryptoKeyVersion_GOOGLE_SYMMETRIC_ENCRYPTION,
		CreateTime:      timestamppb.New(v.created),
	}
	if v.key.purpose != kmspb.CryptoKey_ENCRYPT_DECRYPT {
		out.Algorithm = kmspb.CryptoKeyVersion_EC_SIGN_P256_SHA256
	}
	if !v.destroyTime.IsZero() {
		out.DestroyTime = timestamppb.New(v.destroyTime)
	}
	return out
}

func (s *Server) keyProto(k *cryptoKey) *kmspb.CryptoKey {
	out := &kmspb.CryptoKey{
		Name:                     k.name,
		Purpose:                  k.purpose,
		CreateTime:               timestamppb.New(k.created),
		DestroyScheduledDuration: durationpb.New(k.destroyDelay),
		VersionTemplate: &kmspb.CryptoKeyVersionTemplate{
			ProtectionLevel: kmspb.ProtectionLevel_SOFTWARE,
			Algorithm:       kmspb.CryptoKeyVersion_GOOGLE_SYMMETRIC_ENCRYPTION,
		},
	}
	if k.primary != 0 {
		out.Primary = s.versionProto(k.versions[k.primary-1])
	}
	return out
}

// checkCRC verifies a request checksum as the API does: absent is allowed
// (not verified), present must match.
func checkCRC(c *wrapperspb.Int64Value, data []byte, crcField, dataField string) (verified bool, err error) {
	if c == nil {
		return false, nil
	}
	if c.GetValue() != crc(data) {
		return false, status.Errorf(codes.InvalidArgument, "The checksum in field %s did not match the data in field %s.", crcField, dataField)
	}
	return true, nil
}

// Encrypt implements the KeyManagementService method.
func (s *Server) Encrypt(_ context.Context, req *kmspb.EncryptRequest) (*kmspb.EncryptResponse, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.enter(Encrypt); err != nil {
		return nil, err
	}
	pt, aad := req.GetPlaintext(), req.GetAdditionalAuthenticatedData()
	ptCRC, aadCRC := req.GetPlaintextCrc32C(), req.GetAdditionalAuthenticatedDataCrc32C()
	if take(s.corruptRequests, Encrypt) {
		pt = flip(pt)
	}
	if take(s.dropChecksums, Encrypt) {
		ptCRC, aadCRC = nil, nil
	}
	verifiedPT, err := checkCRC(ptCRC, pt, "plaintext_crc32c", "plaintext")
	if err != nil {
		return nil, err
	}
	verifiedAAD, err := checkCRC(aadCRC, aad, "additional_authenticated_data_crc32c", "additional_authenticated_data")
	if err != nil {
		return nil, err
	}
	if verifiedPT && verifiedAAD {
		s.checksummed[Encrypt]++
	}
	switch {
	case len(pt) == 0:
		return nil, status.Error(codes.InvalidArgument, "Plaintext is required.")
	case len(pt) > MaxPlaintext:
		return nil, status.Errorf(codes.InvalidArgument, "Plaintext is larger than %d bytes.", MaxPlaintext)
	case len(aad) > MaxAAD:
		return nil, status.Errorf(codes.InvalidArgument, "Additional authenticated data is larger than %d bytes.", MaxAAD)
	}

	var v *keyVersion
	if strings.Contains(req.GetName(), "/cryptoKeyVersions/") {
		if v, err = s.lookupVersion(req.GetName()); err != nil {
			return nil, err
		}
	} else {
		k, err := s.lookupKey(req.GetName())
		if err != nil {
			return nil, err
		}
		if k.primary == 0 {
			return nil, status.Errorf(codes.FailedPrecondition, "CryptoKey %s has no primary version.", k.name)
		}
		v = k.versions[k.primary-1]
	}
	if v.key.purpose != kmspb.CryptoKey_ENCRYPT_DECRYPT {
		return nil, status.Errorf(codes.FailedPrecondition, "Resource %s has purpose %s, not ENCRYPT_DECRYPT.", v.key.name, v.key.purpose)
	}
	if v.state != kmspb.CryptoKeyVersion_ENABLED {
		return nil, notEnabled(v)
	}

	ct := make([]byte, headerSize+nonceSize, headerSize+nonceSize+len(pt)+tagSize)
	ct[0] = ctFormat
	copy(ct[1:headerSize], v.id[:])
	rand.Read(ct[headerSize:])
	ct = v.aead.Seal(ct, ct[headerSize:], pt, gcmAAD(ct[:headerSize], aad))
	resp := &kmspb.EncryptResponse{
		Name:                    v.name(),
		Ciphertext:              ct,
		CiphertextCrc32C:        wrapperspb.Int64(crc(ct)),
		VerifiedPlaintextCrc32C: verifiedPT,
		VerifiedAdditionalAuthenticatedDataCrc32C: verifiedAAD,
		ProtectionLevel: kmspb.ProtectionLevel_SOFTWARE,
	}
	if take(s.corruptResponses, Encrypt) {
		resp.Ciphertext = flip(resp.Ciphertext)
	}
	return resp, nil
}

// gcmAAD binds the ciphertext header and the caller's data; the header has
// a fixed length, so the concatenation is unambiguous.
func gcmAAD(header, aad []byte) []byte {
	return append(slices.Clone(header), aad...)
}

// Decrypt implements the KeyManagementService method.
func (s *Server) Decrypt(_ context.Context, req *kmspb.DecryptRequest) (*kmspb.DecryptResponse, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.enter(Decrypt); err != nil {
		return nil, err
	}
	ct, aad := req.GetCiphertext(), req.GetAdditionalAuthenticatedData()
	ctCRC, aadCRC := req.GetCiphertextCrc32C(), req.GetAdditionalAuthenticatedDataCrc32C()
	if take(s.corruptRequests, Decrypt) {
		ct = flip(ct)
	}
	if take(s.dropChecksums, Decrypt) {
		ctCRC, aadCRC = nil, nil
	}
	verifiedCT, err := checkCRC(ctCRC, ct, "ciphertext_crc32c", "ciphertext")
	if err != nil {
		return nil, err
	}
	verifiedAAD, err := checkCRC(aadCRC, aad, "additional_authenticated_data_crc32c", "additional_authenticated_data")
	if err != nil {
		return nil, err
	}
	if verifiedCT && verifiedAAD {
		s.checksummed[Decrypt]++
	}
	k, err := s.lookupKey(req.GetName())
	if err != nil {
		return nil, err
	}
	if k.purpose != kmspb.CryptoKey_ENCRYPT_DECRYPT {
		return nil, status.Errorf(codes.FailedPrecondition, "Resource %s has purpose %s, not ENCRYPT_DECRYPT.", k.name, k.purpose)
	}
	switch {
	case len(ct) == 0:
		return nil, status.Error(codes.InvalidArgument, "Ciphertext is required.")
	case len(ct) > maxCiphertext:
		return nil, status.Error(codes.InvalidArgument, msgInvalidCiphertext)
	case len(aad) > MaxAAD:
		return nil, status.Errorf(codes.InvalidArgument, "Additional authenticated data is larger than %d bytes.", MaxAAD)
	case len(ct) < headerSize+nonceSize+tagSize || ct[0] != ctFormat:
		return nil, status.Error(codes.InvalidArgument, msgInvalidCiphertext)
	}
	var id [idSize]byte
	copy(id[:], ct[1:headerSize])
	v, ok := s.ids[id]
	if !ok || v.key != k {
		return nil, status.Error(codes.InvalidArgument, msgWrongKey)
	}
	if v.state != kmspb.CryptoKeyVersion_ENABLED {
		return nil, notEnabled(v)
	}
	pt, err := v.aead.Open(nil, ct[headerSize:headerSize+nonceSize], ct[headerSize+nonceSize:], gcmAAD(ct[:headerSize], aad))
	if err != nil {
		return nil, status.Error(codes.InvalidArgument, msgInvalidCiphertext)
	}
	resp := &kmspb.DecryptResponse{
		Plaintext:       pt,
		PlaintextCrc32C: wrapperspb.Int64(crc(pt)),
		UsedPrimary:     v.num == k.primary,
		ProtectionLevel: kmspb.ProtectionLevel_SOFTWARE,
	}
	if take(s.corruptResponses, Decrypt) {
		resp.Plaintext = flip(resp.Plaintext)
	}
	return resp, nil
}

// GetCryptoKey implements the KeyManagementService method.
func (s *Server) GetCryptoKey(_ context.Context, req *kmspb.GetCryptoKeyRequest) (*kmspb.CryptoKey, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.enter(GetCryptoKey); err != nil {
		return nil, err
	}
	k, err := s.lookupKey(req.GetName())
	if err != nil {
		return nil, err
	}
	return s.keyProto(k), nil
}

// GetCryptoKeyVersion implements the KeyManagementService method. A version
// in PENDING_GENERATION becomes ENABLED when it is read.
func (s *Server) GetCryptoKeyVersion(_ context.Context, req *kmspb.GetCryptoKeyVersionRequest) (*kmspb.CryptoKeyVersion, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.enter(GetCryptoKeyVersion); err != nil {
		return nil, err
	}
	v, err := s.lookupVersion(req.GetName())
	if err != nil {
		return nil, err
	}
	out := s.versionProto(v)
	if v.state == kmspb.CryptoKeyVersion_PENDING_GENERATION {
		v.state = kmspb.CryptoKeyVersion_ENABLED
	}
	return out, nil
}

// ListCryptoKeyVersions implements the KeyManagementService method, in
// pages, in version order. Filters and ordering are not supported.
func (s *Server) ListCryptoKeyVersions(_ context.Context, req *kmspb.ListCryptoKeyVersionsRequest) (*kmspb.ListCryptoKeyVersionsResponse, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.enter(ListCryptoKeyVersions); err != nil {
		return nil, err
	}
	if req.GetFilter() != "" || req.GetOrderBy() != "" {
		return nil, status.Error(codes.Unimplemented, "kmsserver: filter and order_by are not supported")
	}
	k, err := s.lookupKey(req.GetParent())
	if err != nil {
		return nil, err
	}
	size := int(req.GetPageSize())
	switch {
	case size < 0:
		return nil, status.Error(codes.InvalidArgument, "page_size must not be negative")
	case size == 0:
		size = defaultPageSize
	case size > maxPageSize:
		size = maxPageSize
	}
	start := 0
	if tok := req.GetPageToken(); tok != "" {
		start, err = strconv.Atoi(tok)
		if err != nil || start < 0 || start > len(k.versions) {
			return nil, status.Error(codes.InvalidArgument, "invalid page_token")
		}
	}
	end := min(start+size, len(k.versions))
	resp := &kmspb.ListCryptoKeyVersionsResponse{TotalSize: int32(len(k.versions))}
	for _, v := range k.versions[start:end] {
		resp.CryptoKeyVersions = append(resp.CryptoKeyVersions, s.versionProto(v))
	}
	if end < len(k.versions) {
		resp.NextPageToken = strconv.Itoa(end)
	}
	return resp, nil
}

// CreateCryptoKeyVersion implements the KeyManagementService method. The
// new version is not made primary.
func (s *Server) CreateCryptoKeyVersion(_ context.Context, req *kmspb.CreateCryptoKeyVersionRequest) (*kmspb.CryptoKeyVersion, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.enter(CreateCryptoKeyVersion); err != nil {
		return nil, err
	}
	k, err := s.lookupKey(req.GetParent())
	if err != nil {
		return nil, err
	}
	v := s.newVersion(k)
	v.state = kmspb.CryptoKeyVersion_ENABLED
	if s.pendingGeneration {
		v.state = kmspb.CryptoKeyVersion_PENDING_GENERATION
	}
	return s.versionProto(v), nil
}

// UpdateCryptoKeyPrimaryVersion implements the KeyManagementService method.
func (s *Server) UpdateCryptoKeyPrimaryVersion(_ context.Context, req *kmspb.UpdateCryptoKeyPrimaryVersionRequest) (*kmspb.CryptoKey, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.enter(UpdateCryptoKeyPrimaryVersion); err != nil {
		return nil, err
	}
	k, err := s.lookupKey(req.GetName())
	if err != nil {
		return nil, err
	}
	if k.purpose != kmspb.CryptoKey_ENCRYPT_DECRYPT {
		return nil, status.Errorf(codes.FailedPrecondition, "CryptoKey %s has purpose %s; only ENCRYPT_DECRYPT keys have a primary version.", k.name, k.purpose)
	}
	n, err := strconv.ParseUint(req.GetCryptoKeyVersionId(), 10, 32)
	if err != nil || n == 0 {
		return nil, status.Errorf(codes.InvalidArgument, "invalid crypto_key_version_id %q", req.GetCryptoKeyVersionId())
	}
	if n > uint64(len(k.versions)) {
		return nil, status.Errorf(codes.NotFound, "CryptoKeyVersion %s/cryptoKeyVersions/%d not found.", k.name, n)
	}
	if v := k.versions[n-1]; v.state != kmspb.CryptoKeyVersion_ENABLED {
		return nil, notEnabled(v)
	}
	k.primary = uint32(n)
	return s.keyProto(k), nil
}

// UpdateCryptoKeyVersion implements the KeyManagementService method for the
// one field it can change here, state, between ENABLED and DISABLED.
func (s *Server) UpdateCryptoKeyVersion(_ context.Context, req *kmspb.UpdateCryptoKeyVersionRequest) (*kmspb.CryptoKeyVersion, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.enter(UpdateCryptoKeyVersion); err != nil {
		return nil, err
	}
	if paths := req.GetUpdateMask().GetPaths(); len(paths) != 1 || paths[0] != "state" {
		return nil, status.Errorf(codes.InvalidArgument, "kmsserver: update_mask must be [state], got %v", paths)
	}
	v, err := s.lookupVersion(req.GetCryptoKeyVersion().GetName())
	if err != nil {
		return nil, err
	}
	want := req.GetCryptoKeyVersion().GetState()
	if want != kmspb.CryptoKeyVersion_ENABLED && want != kmspb.CryptoKeyVersion_DISABLED {
		return nil, status.Errorf(codes.InvalidArgument, "state can only be set to ENABLED or DISABLED, not %s", want)
	}
	if v.state != kmspb.CryptoKeyVersion_ENABLED && v.state != kmspb.CryptoKeyVersion_DISABLED {
		return nil, status.Errorf(codes.FailedPrecondition,
			"The request cannot be fulfilled. Resource %s has state %s; only ENABLED and DISABLED versions can change state.", v.name(), v.state)
	}
	v.state = want
	return s.versionProto(v), nil
}

// DestroyCryptoKeyVersion implements the KeyManagementService method: the
// version is scheduled for destruction after its key's
// destroy_scheduled_duration, and refuses every operation from now on.
func (s *Server) DestroyCryptoKeyVersion(_ context.Context, req *kmspb.DestroyCryptoKeyVersionRequest) (*kmspb.CryptoKeyVersion, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.enter(DestroyCryptoKeyVersion); err != nil {
		return nil, err
	}
	v, err := s.lookupVersion(req.GetName())
	if err != nil {
		return nil, err
	}
	if v.state != kmspb.CryptoKeyVersion_ENABLED && v.state != kmspb.CryptoKeyVersion_DISABLED {
		return nil, status.Errorf(codes.FailedPrecondition,
			"The request cannot be fulfilled. Resource %s has state %s and cannot be destroyed.", v.name(), v.state)
	}
	if s.disableFirst && v.state == kmspb.CryptoKeyVersion_ENABLED {
		return nil, status.Errorf(codes.FailedPrecondition,
			"The request cannot be fulfilled. Resource %s must be disabled before it can be destroyed (organization policy).", v.name())
	}
	v.state = kmspb.CryptoKeyVersion_DESTROY_SCHEDULED
	v.destroyTime = s.now().Add(v.key.destroyDelay)
	if v.key.destroyDelay == 0 {
		v.state = kmspb.CryptoKeyVersion_DESTROYED
		v.aead = nil
	}
	return s.versionProto(v), nil
}

// RestoreCryptoKeyVersion implements the KeyManagementService method: a
// version scheduled for destruction becomes DISABLED again.
func (s *Server) RestoreCryptoKeyVersion(_ context.Context, req *kmspb.RestoreCryptoKeyVersionRequest) (*kmspb.CryptoKeyVersion, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.enter(RestoreCryptoKeyVersion); err != nil {
		return nil, err
	}
	v, err := s.lookupVersion(req.GetName())
	if err != nil {
		return nil, err
	}
	if v.state != kmspb.CryptoKeyVersion_DESTROY_SCHEDULED {
		return nil, status.Errorf(codes.FailedPrecondition,
			"The request cannot be fulfilled. Resource %s has state %s and cannot be restored.", v.name(), v.state)
	}
	v.state = kmspb.CryptoKeyVersion_DISABLED
	v.destroyTime = time.Time{}
	return s.versionProto(v), nil
}
