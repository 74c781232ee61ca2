package testing_test

import (
	"go/parser"
	"go/token"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
)

// The test tools under internal/testing stay out of the product: no non-test
// file imports them but the CLI's test commands (demo, soak, bench), and
// testenv not even those.
func TestOnlyTestsAndTestCommandsUseTheTestTools(t *testing.T) {
	root := filepath.Join("..", "..")
	const tools = "github.com/fedpipe/fedpipe/internal/testing/"
	testCommand := regexp.MustCompile(`^cmd/fedpipe/(demo|soak|bench)[a-z_]*\.go$`)
	checked := 0
	err := filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, path)
		rel = filepath.ToSlash(rel)
		if d.IsDir() {
			if rel == "third_party" || rel == "internal/testing" || strings.HasPrefix(d.Name(), ".") && rel != "." {
				return filepath.SkipDir
			}
			return nil
		}
		if !strings.HasSuffix(rel, ".go") || strings.HasSuffix(rel, "_test.go") {
			return nil
		}
		src, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		f, err := parser.ParseFile(token.NewFileSet(), rel, src, parser.ImportsOnly)
		if err != nil {
			return err
		}
		checked++
		for _, imp := range f.Imports {
			p, _ := strconv.Unquote(imp.Path.Value)
			switch {
			case !strings.HasPrefix(p, tools):
			case p == tools+"testenv":
				t.Errorf("%s imports %s, which only tests may", rel, p)
			case !testCommand.MatchString(rel):
				t.Errorf("%s imports %s: the product must not depend on a test tool", rel, p)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if checked < 100 {
		t.Fatalf("checked %d files: walked the wrong tree?", checked)
	}
}
