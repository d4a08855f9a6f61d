// The floor of the HTTP benchmark: an endpoint that does nothing, in Go's net/http,
// driven by the same load generator on the same machine. Whatever latency it shows is
// the machine's and the load generator's, not the service's.
package main

import (
	"net/http"
	"os"
)

func main() {
	body := []byte(`{"ok":true}`)
	http.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write(body)
	})
	if err := http.ListenAndServe(os.Args[1], nil); err != nil {
		panic(err)
	}
}
