module lease_sched/clients/go

go 1.19
