module github.com/facedet/facedet/clients/go

go 1.19
