package imagespec

import (
	"bytes"
	"fmt"
	"regexp"
)

// layout is where keys, table headers and array elements are in a TOML
// document, so that an error can name its line. It comes from a small
// scanner that knows TOML's table headers, strings, comments and brackets
// (enough to tell a key from text in a string), not from the decoder, which
// gives no positions for values it accepted. It never fails: on a document
// it does not understand it finds fewer lines.
type layout struct {
	keys    []keyPos
	headers []keyPos       // key is ""
	lines   map[int]string // line → name of the key set or continued on it, or of the header on it
}

type keyPos struct {
	table string // "" for the top level
	idx   int    // the table's index when it is an array of tables ([[table]]), else -1
	key   string
	line  int
	elems []int // if the value is an array: the line each element starts on
}

var (
	arrayHeaderRE = regexp.MustCompile(`^\[\[\s*([A-Za-z0-9_.-]+)\s*\]\]`)
	tableHeaderRE = regexp.MustCompile(`^\[\s*([A-Za-z0-9_.-]+)\s*\]`)
	keyRE         = regexp.MustCompile(`^(?:"([^"\\]*)"|'([^']*)'|([A-Za-z0-9_.-]+))\s*=`)
)

// keyName names a key for messages: "base", "copy[2].src" (counting from 1).
func keyName(table string, idx int, key string) string {
	prefix := table
	if idx >= 0 {
		prefix = fmt.Sprintf("%s[%d]", table, idx+1)
	}
	switch {
	case prefix == "":
		return key
	case key == "":
		return prefix
	}
	return prefix + "." + key
}

func scanLayout(data []byte) *layout {
	l := &layout{lines: map[int]string{}}
	table, idx := "", -1
	count := map[string]int{}
	line, i := 1, 0
	for i < len(data) {
		end := bytes.IndexByte(data[i:], '\n')
		if end < 0 {
			end = len(data)
		} else {
			end += i
		}
		text := data[i:end]
		body := bytes.TrimLeft(text, " \t")
		lead := len(text) - len(body)
		if m := arrayHeaderRE.FindSubmatch(body); m != nil {
			table = string(m[1])
			idx = count[table]
			count[table]++
			l.headers = append(l.headers, keyPos{table: table, idx: idx, line: line})
			l.lines[line] = keyName(table, idx, "")
			i = end
		} else if m := tableHeaderRE.FindSubmatch(body); m != nil {
			table, idx = string(m[1]), -1
			l.headers = append(l.headers, keyPos{table: table, idx: idx, line: line})
			l.lines[line] = table
			i = end
		} else if m := keyRE.FindSubmatchIndex(body); m != nil {
			var key string
			for g := 1; g <= 3; g++ {
				if m[2*g] >= 0 {
					key = string(body[m[2*g]:m[2*g+1]])
					break
				}
			}
			l.keys = append(l.keys, keyPos{table: table, idx: idx, key: key, line: line})
			k := &l.keys[len(l.keys)-1]
			l.lines[line] = keyName(table, idx, key)
			i, line = l.scanValue(data, i+lead+m[1], line, k)
		} else {
			i = end
		}
		// i is at the newline that ends the line (or the end).
		if i < len(data) {
			i++
			line++
		}
	}
	return l
}

// scanValue skips a value that starts at i, recording the lines it spans
// and, for an array, where its elements start. It returns the index of the
// newline after it (or len(data)) and the line that newline ends.
func (l *layout) scanValue(data []byte, i, line int, k *keyPos) (int, int) {
	name := keyName(k.table, k.idx, k.key)
	var open []byte // brackets and braces not yet closed
	for i < len(data) {
		c := data[i]
		switch c {
		case '\n':
			if len(open) == 0 {
				return i, line
			}
			line++
			l.lines[line] = name
			i++
		case '#':
			for i < len(data) && data[i] != '\n' {
				i++
			}
		case '[', '{':
			if len(open) == 1 && open[0] == '[' {
				k.elems = append(k.elems, line)
			}
			open = append(open, c)
			i++
		case ']', '}':
			if len(open) > 0 {
				open = open[:len(open)-1]
			}
			i++
		case '"', '\'':
			if len(open) == 1 && open[0] == '[' {
				k.elems = append(k.elems, line)
			}
			i, line = l.skipString(data, i, line, name)
		default:
			if len(open) == 1 && open[0] == '[' && c != ' ' && c != '\t' && c != ',' && c != '\r' && (i == 0 || isElemStart(data[i-1])) {
				k.elems = append(k.elems, line) // a bare value: number, boolean, date
			}
			i++
		}
	}
	return i, line
}

// isElemStart: a bare array element starts after one of these.
func isElemStart(prev byte) bool {
	return prev == '[' || prev == ',' || prev == ' ' || prev == '\t' || prev == '\n'
}

// skipString skips the string that starts at i (any of TOML's four kinds).
func (l *layout) skipString(data []byte, i, line int, name string) (int, int) {
	q := data[i]
	if bytes.HasPrefix(data[i:], []byte{q, q, q}) {
		i += 3
		for i < len(data) {
			switch {
			case data[i] == '\n':
				line++
				l.lines[line] = name
				i++
			case q == '"' && data[i] == '\\':
				if i+1 < len(data) && data[i+1] != '\n' {
					i += 2
				} else {
					i++
				}
			case bytes.HasPrefix(data[i:], []byte{q, q, q}):
				i += 3
				// Up to two more quotes belong to the string.
				for n := 0; n < 2 && i < len(data) && data[i] == q; n++ {
					i++
				}
				return i, line
			default:
				i++
			}
		}
		return i, line
	}
	i++
	for i < len(data) && data[i] != '\n' {
		switch {
		case q == '"' && data[i] == '\\':
			if i+1 < len(data) && data[i+1] != '\n' {
				i += 2
			} else {
				i++
			}
		case data[i] == q:
			return i + 1, line
		default:
			i++
		}
	}
	return i, line
}

func (l *layout) find(table string, idx int, key string) *keyPos {
	for i := range l.keys {
		k := &l.keys[i]
		if k.table == table && k.idx == idx && k.key == key {
			return k
		}
	}
	return nil
}

// keyLine is the line that sets key in table (idx for [[table]]), or 0.
func (l *layout) keyLine(table string, idx int, key string) int {
	if k := l.find(table, idx, key); k != nil {
		return k.line
	}
	return 0
}

// elemLine is the line of the i-th element of key's array, or the key's
// line.
func (l *layout) elemLine(table string, idx int, key string, i int) int {
	k := l.find(table, idx, key)
	switch {
	case k == nil:
		return 0
	case i < len(k.elems):
		return k.elems[i]
	}
	return k.line
}

// headerLine is the line of the table's header, or 0.
func (l *layout) headerLine(table string, idx int) int {
	for _, h := range l.headers {
		if h.table == table && h.idx == idx {
			return h.line
		}
	}
	return 0
}

// copyLine is the line where the i-th copy table starts: its [[copy]]
// header, or its element of an inline copy = [...] array.
func (l *layout) copyLine(i int) int {
	if n := l.headerLine("copy", i); n > 0 {
		return n
	}
	return l.elemLine("", -1, "copy", i)
}

// nameAt names the key set or continued on line, or the table whose
// header is there ("" if none).
func (l *layout) nameAt(line int) string {
	return l.lines[line]
}
