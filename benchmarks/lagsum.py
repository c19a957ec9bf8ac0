import json,sys
for line in sys.stdin:
    line=line.strip()
    if not line.startswith("{"): continue
    d=json.loads(line)
    l=sorted(d.pop("lags_ms",[]))
    if l:
        d["lag_min"]=l[0]; d["p50"]=l[len(l)//2]; d["p99"]=l[int(len(l)*.99)]; d["max"]=l[-1]; d["n"]=len(l)
    print({k:v for k,v in d.items() if not isinstance(v,list) or len(v)<5})
