package oci

import (
	"errors"
	"fmt"
	"io"
)

// Default caps on what an image import unpacks (config: oci.max_layer_size,
// oci.max_image_size).
const (
	DefaultMaxLayerBytes int64 = 16 << 30
	DefaultMaxImageBytes int64 = 32 << 30
)

// ErrTooLarge: a layer, or an image's layers together, unpack to more than
// their cap. The refusal happens while the layer streams, before a file
// whose header would cross the cap is created.
var ErrTooLarge = errors.New("image unpacks past its size cap")

// Limits bound what Flatten unpacks from layers a registry served. Each is
// counted twice, and both counts are capped: the bytes the layer's
// decompressed tar stream holds, and the bytes of the regular files it
// writes (a sparse tar entry can declare more file bytes than its stream
// holds). Zero fields mean the defaults.
type Limits struct {
	// MaxLayerBytes caps one layer; 0 means DefaultMaxLayerBytes.
	MaxLayerBytes int64
	// MaxImageBytes caps all of an image's layers together (files a later
	// layer deletes still count); 0 means DefaultMaxImageBytes.
	MaxImageBytes int64
}

func (l Limits) layerCap() int64 {
	if l.MaxLayerBytes > 0 {
		return l.MaxLayerBytes
	}
	return DefaultMaxLayerBytes
}

func (l Limits) imageCap() int64 {
	if l.MaxImageBytes > 0 {
		return l.MaxImageBytes
	}
	return DefaultMaxImageBytes
}

// unpackBudget is what the layers so far unpacked: stream and file bytes,
// of the current layer and of the image.
type unpackBudget struct {
	lim                     Limits
	layerStream, layerFiles int64
	imageStream, imageFiles int64
}

// tooLarge is an ErrTooLarge refusal with its own one-line message.
type tooLarge struct{ msg string }

func (e *tooLarge) Error() string        { return e.msg }
func (e *tooLarge) Is(target error) bool { return target == ErrTooLarge }

func (b *unpackBudget) overLayer() error {
	return &tooLarge{fmt.Sprintf("unpacks to more than %s, the cap for one layer (oci.max_layer_size); refusing", humanBytes(b.lim.layerCap()))}
}

func (b *unpackBudget) overImage() error {
	return &tooLarge{fmt.Sprintf("the image unpacks to more than %s, the cap for one image (oci.max_image_size); refusing", humanBytes(b.lim.imageCap()))}
}

// stream counts n more decompressed bytes.
func (b *unpackBudget) stream(n int64) error {
	b.layerStream += n
	b.imageStream += n
	if b.layerStream > b.lim.layerCap() {
		return b.overLayer()
	}
	if b.imageStream > b.lim.imageCap() {
		return b.overImage()
	}
	return nil
}

// file reserves a regular file of size bytes before it is created: it is
// refused if it would take the layer or the image past a cap, counted in
// file bytes or in stream bytes (its content is still to come).
func (b *unpackBudget) file(size int64) error {
	if size > b.lim.layerCap()-b.layerFiles || size > b.lim.layerCap()-b.layerStream {
		return b.overLayer()
	}
	if size > b.lim.imageCap()-b.imageFiles || size > b.lim.imageCap()-b.imageStream {
		return b.overImage()
	}
	b.layerFiles += size
	b.imageFiles += size
	return nil
}

// budgetReader counts a layer's decompressed stream and fails a read that
// takes it past a cap: the refusal comes while streaming.
type budgetReader struct {
	r io.Reader
	b *unpackBudget
}

func (r budgetReader) Read(p []byte) (int, error) {
	if err := r.b.stream(0); err != nil {
		return 0, err // sticky: nothing more is read once over
	}
	room := min(r.b.lim.layerCap()-r.b.layerStream, r.b.lim.imageCap()-r.b.imageStream)
	if room < int64(len(p))-1 {
		p = p[:room+1] // read at most one byte past a cap
	}
	n, err := r.r.Read(p)
	if berr := r.b.stream(int64(n)); berr != nil {
		return n, berr
	}
	return n, err
}
